//! `smelt run`: one prompt, one streamed answer (or a JSON record with timings).

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};
use serde_json::json;
use smelt_models::{generate, Message, StopReason};

use super::lm;
use crate::cli::{Global, RunArgs};

/// Reads the prompt from the flag, a file or stdin, insisting on UTF-8.
fn prompt_text(args: &RunArgs) -> Result<String> {
    if let Some(p) = &args.prompt {
        return Ok(p.clone());
    }
    let Some(path) = &args.file else { bail!("give a prompt with -p TEXT or -f FILE (-f - reads stdin)") };
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes).context("reading the prompt from stdin")?;
    } else {
        bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    }
    String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("the prompt is not valid UTF-8 (invalid byte at offset {})", e.utf8_error().valid_up_to()))
}

pub fn run(args: &RunArgs, global: &Global) -> Result<i32> {
    let text = prompt_text(args)?;
    let lm = lm::load(&args.lm, global)?;
    let cancel = lm::cancel_flag();
    let use_template = !args.raw && lm.template.from_model;
    let prompt = if use_template {
        let mut msgs = Vec::new();
        if let Some(s) = &args.system {
            msgs.push(Message::new("system", s));
        }
        msgs.push(Message::new("user", &text));
        lm.template.render(&msgs, true)?
    } else {
        text
    };
    let ids = lm.tok.encode(&prompt, true);
    let ctx = lm::context(&args.lm, &lm.model, global.quiet);
    let mut sess = lm.model.session(ctx);
    let (cfg, seed) = lm::checked_config(&args.lm)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let generation = {
        let _g = lm::Generating::start();
        let mut write_err = None;
        let result = generate(&lm.model, &lm.tok, &lm.pool, &mut sess, &ids, &cfg, cancel, &mut |piece| {
            if !args.json && write_err.is_none() {
                if let Err(e) = out.write_all(piece.as_bytes()).and_then(|()| out.flush()) {
                    write_err = Some(e);
                    cancel.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        if let Some(e) = write_err {
            return Err(e.into());
        }
        result?
    };
    let tps = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let processed = generation.prompt_tokens - generation.cached_tokens;
    if args.json {
        let v = json!({
            "model": lm.name,
            "text": generation.text,
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.tokens.len(),
            "stop_reason": generation.stop_reason,
            "seed": seed,
            "chat_template": use_template,
            "timings": {
                "load_seconds": lm.load_seconds,
                "prompt_seconds": generation.prompt_seconds,
                "prompt_tokens_per_second": tps(processed, generation.prompt_seconds),
                "generation_seconds": generation.generation_seconds,
                "generation_tokens_per_second": tps(generation.tokens.len(), generation.generation_seconds),
            },
        });
        serde_json::to_writer_pretty(&mut out, &v)?;
    }
    writeln!(out)?;
    if !global.quiet && !args.json {
        eprintln!(
            "\n[{}: prompt {} tokens in {:.0} ms ({:.1} t/s), generated {} tokens in {:.0} ms ({:.1} t/s), stopped: {:?}]",
            lm.name,
            generation.prompt_tokens,
            generation.prompt_seconds * 1e3,
            tps(processed, generation.prompt_seconds),
            generation.tokens.len(),
            generation.generation_seconds * 1e3,
            tps(generation.tokens.len(), generation.generation_seconds),
            generation.stop_reason
        );
    }
    Ok(if generation.stop_reason == StopReason::Cancelled { 130 } else { 0 })
}
