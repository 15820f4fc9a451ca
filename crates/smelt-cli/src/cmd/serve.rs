//! `smelt serve`: the OpenAI-compatible server (the work is in smelt-serve).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use smelt_serve::engine::Gate;
use smelt_serve::{Budget, Limits, PrivacyMode, RemoteOptions, ServeOptions};

use crate::cli::{Global, ServeArgs};

fn remote(args: &ServeArgs) -> Result<Option<RemoteOptions>> {
    let Some(url) = &args.remote else { return Ok(None) };
    let key = match &args.remote_key_env {
        Some(var) => Some(std::env::var(var).with_context(|| format!("--remote-key-env {var}: the variable is not set"))?),
        None => None,
    };
    let mut patterns = Vec::new();
    for p in &args.private_patterns {
        let Some((name, re)) = p.split_once('=') else { bail!("--private-pattern {p:?}: write NAME=REGEX") };
        patterns.push((name.to_string(), re.to_string()));
    }
    Ok(Some(RemoteOptions {
        url: url.clone(),
        model: args.remote_model.clone().unwrap_or_else(|| "default".into()),
        key,
        ca: args.remote_ca.clone(),
        privacy: if args.privacy == "redact" { PrivacyMode::Redact } else { PrivacyMode::Pin },
        patterns,
        budget: Budget { requests_per_minute: args.remote_rpm, tokens_per_day: args.remote_tokens_per_day },
        timeout: Duration::from_secs_f64(args.remote_timeout),
        complexity: args.complexity.clone().map(|p| (p, args.complexity_threshold)),
        confidence: (args.confidence_tokens > 0).then_some(Gate { tokens: args.confidence_tokens, min_mean_logprob: args.confidence_logprob, min_top1: args.confidence_top1 }),
    }))
}

pub fn run(args: &ServeArgs, global: &Global) -> Result<i32> {
    let api_key = args.api_key.clone().or_else(|| std::env::var("SMELT_API_KEY").ok().filter(|k| !k.is_empty()));
    let opts = ServeOptions {
        host: args.host.clone(),
        port: u16::try_from(args.port)?,
        model: args.model.clone(),
        alias: args.alias.clone(),
        embed: args.embed.clone(),
        as_type: args.as_type,
        slots: args.parallel,
        context: args.ctx_size,
        queue: args.queue,
        threads: global.n_threads(),
        api_key,
        limits: Limits { max_body: args.max_body, timeout: Some(Duration::from_secs_f64(args.timeout)), ..Limits::default() },
        remote: remote(args)?,
        request_log: args.request_log.clone(),
        drift_window: args.drift_window,
        low_logprob: args.confidence_logprob,
    };
    // Models named from the catalog are fetched here, with progress, before the port opens.
    for name in std::iter::once(&args.model).chain(&args.embed) {
        crate::resolve_model(name, global.quiet)?;
    }
    let quiet = global.quiet;
    smelt_serve::run(opts, Arc::new(move |line: &str| {
        if !quiet || line.starts_with("listening") {
            eprintln!("smelt serve: {line}");
        }
    }))?;
    Ok(0)
}
