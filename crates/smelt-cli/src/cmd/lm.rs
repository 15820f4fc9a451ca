//! What `run` and `chat` share: loading a model with its tokenizer and chat template, the
//! generation settings, and Ctrl-C handling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, Result};
use smelt_kernels::pool::ThreadPool;
use smelt_models::{ChatTemplate, GenerateConfig, Llama, LoadOptions, SamplerConfig, Tokenizer};

use crate::cli::{Global, LmArgs};

pub struct Lm {
    pub model: Llama,
    pub tok: Tokenizer,
    pub template: ChatTemplate,
    pub pool: ThreadPool,
    pub load_seconds: f64,
    pub name: String,
}

pub fn load(args: &LmArgs, global: &Global) -> Result<Lm> {
    let t = Instant::now();
    let mut show = crate::FetchProgress::new(global.quiet);
    let opened = smelt_models::open(&args.model, LoadOptions { weight_type: args.as_type }, &mut |e| show.event(e));
    show.finish();
    let (path, smelt_models::Loaded { mut model, tok, template }) = opened.with_context(|| format!("loading {}", args.model))?;
    for a in &args.lora {
        let adapter = smelt_models::lora::LoraAdapter::open(a).with_context(|| format!("reading the adapter {}", a.display()))?;
        model.apply_lora(&adapter, args.lora_scale).with_context(|| format!("applying the adapter {}", a.display()))?;
    }
    let pool = global.pool();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Lm { model, tok, template, pool, load_seconds: t.elapsed().as_secs_f64(), name })
}

/// The context size: the flag, else the model's trained context capped at 4096. A flag above
/// the trained context is lowered to it, with a warning (positions past it were never trained).
pub fn context(args: &LmArgs, model: &Llama, quiet: bool) -> usize {
    let trained = model.cfg.ctx_train;
    match args.ctx_size {
        Some(c) if c > trained => {
            if !quiet {
                eprintln!("warning: -c {c} is more than the {trained} tokens the model was trained with; using {trained}");
            }
            trained
        }
        Some(c) => c,
        None => trained.min(4096),
    }
}

/// Generation settings from the flags, and the seed they use.
pub fn config(args: &LmArgs) -> (GenerateConfig, u64) {
    let seed = args.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        t ^ (std::process::id() as u64) << 32
    });
    let sampler = SamplerConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n,
        seed,
    };
    (GenerateConfig { max_tokens: args.max_tokens, stop: args.stop.clone(), sampler }, seed)
}

/// [`config`], checked against the sampler's ranges (the parser checked each flag already; this
/// is the library's own check, the one the server will use too).
pub fn checked_config(args: &LmArgs) -> Result<(GenerateConfig, u64)> {
    let (cfg, seed) = config(args);
    cfg.sampler.validate()?;
    if cfg.stop.iter().any(String::is_empty) {
        anyhow::bail!("--stop needs a non-empty string (an empty one would stop before the first token)");
    }
    Ok((cfg, seed))
}

static GENERATING: AtomicBool = AtomicBool::new(false);
static CANCEL: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C (and SIGTERM, SIGHUP) handler (once): during generation or training it
/// stops the work cleanly (training writes a checkpoint); otherwise it exits with status 130.
pub fn cancel_flag() -> &'static AtomicBool {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let _ = ctrlc::set_handler(|| {
            if GENERATING.load(Ordering::SeqCst) && !CANCEL.load(Ordering::SeqCst) {
                CANCEL.store(true, Ordering::SeqCst);
            } else {
                std::process::exit(130);
            }
        });
    });
    &CANCEL
}

/// Marks the span of a generation for the Ctrl-C handler.
pub struct Generating;

impl Generating {
    pub fn start() -> Generating {
        CANCEL.store(false, Ordering::SeqCst);
        GENERATING.store(true, Ordering::SeqCst);
        Generating
    }
}

impl Drop for Generating {
    fn drop(&mut self) {
        GENERATING.store(false, Ordering::SeqCst);
    }
}
