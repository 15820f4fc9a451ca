//! `smelt serve`: the OpenAI-compatible server (the work is in smelt-serve).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use smelt_serve::{Limits, ServeOptions};

use crate::cli::{Global, ServeArgs};

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
