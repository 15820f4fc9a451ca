//! Progress for long work: a bar with ETA on a terminal, a log line every few seconds otherwise
//! (so CI logs and pipes show progress without control characters), nothing with `--quiet`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    start: Instant,
    last_log: Instant,
    quiet: bool,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    /// `total` units of work (bytes, tensors, ...), shown with `unit`.
    pub fn new(label: &str, total: u64, bytes: bool, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let template = if bytes {
                "{prefix} [{elapsed_precise}] {bar:30.cyan/blue} {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta}) {msg}"
            } else {
                "{prefix} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} (ETA {eta}) {msg}"
            };
            let b = ProgressBar::new(total);
            b.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "));
            b.set_prefix(label.to_string());
            b
        });
        let now = Instant::now();
        Progress { bar, label: label.into(), total, done: 0, start: now, last_log: now, quiet }
    }

    /// Adds `n` units; `msg` says what is being worked on.
    pub fn inc(&mut self, n: u64, msg: &str) {
        self.done += n;
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
            b.inc(n);
        } else if !self.quiet && self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let frac = self.done as f64 / self.total.max(1) as f64;
            let elapsed = self.start.elapsed().as_secs_f64();
            let eta = if frac > 0.0 { elapsed / frac - elapsed } else { 0.0 };
            eprintln!("{}: {:.0}% ({}/{}), elapsed {:.0}s, ETA {:.0}s: {msg}", self.label, 100.0 * frac, self.done, self.total, elapsed, eta);
        }
    }

    /// Units done so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
