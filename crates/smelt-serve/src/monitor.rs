//! Watching the deployed model: how sure it is of its answers, and whether the traffic drifts
//! away from what it saw at first.
//!
//! - **Confidence** of every local answer: the mean log-probability of its first
//!   [`WATCH_TOKENS`] tokens (the router's draft statistic); an answer under
//!   [`Watch::low_logprob`] counts as low-confidence (`smelt_answers_total{confidence}`).
//! - **Embedding drift** (with `--embed` and a drift window of `n`): the prompts' sentence
//!   embeddings; the first `n` form the reference, the last `n` the current window, and the
//!   drift is `1 - cos(mean(reference), mean(current))` (0: the same mix of topics; grows as
//!   the traffic moves away; `smelt_drift_embedding_distance`).
//! - A **request log** (`--request-log FILE`, JSON lines) with both, for `smelt monitor`, which
//!   reports the same quantities per window of requests.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use smelt_models::stats::cosine;

/// Tokens whose confidence every local answer reports.
pub const WATCH_TOKENS: usize = 2;

/// One line of the request log.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LogLine {
    /// Unix time, seconds.
    pub time: f64,
    /// `local` or `remote`.
    pub target: String,
    /// The router's reason (`default` without a router).
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub prompt_tokens: usize,
    #[serde(default)]
    pub completion_tokens: usize,
    /// From arrival to the last token, seconds.
    #[serde(default)]
    pub seconds: f64,
    /// Mean log-probability of the first [`WATCH_TOKENS`] tokens (local answers).
    #[serde(default)]
    pub mean_logprob: Option<f32>,
    /// The prompt's embedding (with drift tracking on), base64 of little-endian f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<String>,
}

/// The drift tracker: reference and current windows of prompt embeddings.
#[derive(Debug)]
pub struct Drift {
    window: usize,
    reference: Vec<f64>,
    seen_ref: usize,
    current: VecDeque<Vec<f32>>,
}

impl Drift {
    pub fn new(window: usize) -> Drift {
        Drift { window: window.max(1), reference: Vec::new(), seen_ref: 0, current: VecDeque::new() }
    }

    /// Adds one prompt's embedding.
    pub fn add(&mut self, x: &[f32]) {
        if self.seen_ref < self.window {
            if self.reference.is_empty() {
                self.reference = vec![0.0; x.len()];
            }
            if x.len() == self.reference.len() {
                self.reference.iter_mut().zip(x).for_each(|(r, &v)| *r += v as f64);
                self.seen_ref += 1;
            }
            return;
        }
        self.current.push_back(x.to_vec());
        if self.current.len() > self.window {
            self.current.pop_front();
        }
    }

    /// `1 - cos(mean reference, mean current)`; `None` until both windows are full.
    pub fn distance(&self) -> Option<f64> {
        if self.seen_ref < self.window || self.current.len() < self.window {
            return None;
        }
        let mut cur = vec![0.0f64; self.reference.len()];
        for x in &self.current {
            cur.iter_mut().zip(x).for_each(|(c, &v)| *c += v as f64);
        }
        Some(1.0 - cosine(&self.reference, &cur))
    }
}

/// What the server watches, shared by the engine and the handlers.
#[derive(Debug)]
pub struct Watch {
    /// Answers whose mean log-probability is below this count as low-confidence.
    pub low_logprob: f32,
    pub drift: Option<Mutex<Drift>>,
    log: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
}

impl Default for Watch {
    fn default() -> Self {
        Watch { low_logprob: -1.8, drift: None, log: None }
    }
}

impl Watch {
    /// With a drift window (`0`: off) and a request log appended to `log`.
    pub fn new(low_logprob: f32, drift_window: usize, log: Option<&std::path::Path>) -> std::io::Result<Watch> {
        let log = match log {
            Some(p) => Some(Mutex::new(std::io::BufWriter::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?))),
            None => None,
        };
        Ok(Watch { low_logprob, drift: (drift_window > 0).then(|| Mutex::new(Drift::new(drift_window))), log })
    }

    pub fn logging(&self) -> bool {
        self.log.is_some()
    }

    /// Appends a line to the request log (a failed write is dropped: logging never fails a
    /// request).
    pub fn write(&self, line: &LogLine) {
        if let Some(w) = &self.log {
            let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(s) = serde_json::to_string(line) {
                let _ = writeln!(w, "{s}");
                let _ = w.flush();
            }
        }
    }

    /// The current embedding drift, when tracked and both windows are full.
    pub fn drift_distance(&self) -> Option<f64> {
        self.drift.as_ref().and_then(|d| d.lock().unwrap_or_else(|p| p.into_inner()).distance())
    }
}

/// Unix time now, in seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// One window of `smelt monitor`'s report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Window {
    pub first: usize,
    pub requests: usize,
    pub start: f64,
    pub end: f64,
    pub remote_share: f64,
    /// Among local answers with a confidence.
    pub low_confidence_share: Option<f64>,
    pub mean_prompt_tokens: f64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    /// `1 - cos` of this window's mean embedding to the first window's.
    pub drift: Option<f64>,
}

/// The log cut into windows of `n` requests.
pub fn windows(lines: &[LogLine], n: usize, low_logprob: f32) -> Vec<Window> {
    let n = n.max(1);
    let decode = |e: &str| -> Option<Vec<f64>> {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD.decode(e).ok()?;
        Some(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect())
    };
    let mean_embedding = |w: &[LogLine]| -> Option<Vec<f64>> {
        let mut sum: Option<Vec<f64>> = None;
        for l in w {
            let x = decode(l.embedding.as_deref()?)?;
            let s = sum.get_or_insert_with(|| vec![0.0; x.len()]);
            if s.len() == x.len() {
                s.iter_mut().zip(&x).for_each(|(a, b)| *a += b);
            }
        }
        sum
    };
    let reference = lines.get(..n.min(lines.len())).and_then(mean_embedding);
    lines
        .chunks(n)
        .enumerate()
        .map(|(i, w)| {
            let mut secs: Vec<f64> = w.iter().map(|l| l.seconds).collect();
            secs.sort_by(f64::total_cmp);
            let pct = |q: f64| secs.get(((secs.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
            let conf: Vec<f32> = w.iter().filter(|l| l.target == "local").filter_map(|l| l.mean_logprob).collect();
            Window {
                first: i * n,
                requests: w.len(),
                start: w.first().map_or(0.0, |l| l.time),
                end: w.last().map_or(0.0, |l| l.time),
                remote_share: w.iter().filter(|l| l.target == "remote").count() as f64 / w.len() as f64,
                low_confidence_share: (!conf.is_empty()).then(|| conf.iter().filter(|&&c| c < low_logprob).count() as f64 / conf.len() as f64),
                mean_prompt_tokens: w.iter().map(|l| l.prompt_tokens as f64).sum::<f64>() / w.len() as f64,
                p50_seconds: pct(0.5),
                p99_seconds: pct(0.99),
                drift: match (&reference, mean_embedding(w)) {
                    (Some(r), Some(c)) => Some(1.0 - cosine(r, &c)),
                    _ => None,
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emb(v: &[f32]) -> String {
        crate::embeddings::encode_base64(v)
    }

    #[test]
    fn drift_is_zero_for_the_same_mix_and_grows_when_it_changes() {
        let mut d = Drift::new(2);
        for x in [[1.0, 0.0], [0.0, 1.0]] {
            d.add(&x);
        }
        assert_eq!(d.distance(), None);
        d.add(&[0.0, 1.0]);
        d.add(&[1.0, 0.0]);
        assert!(d.distance().unwrap().abs() < 1e-12);
        d.add(&[1.0, 0.0]);
        d.add(&[1.0, 0.0]);
        // mean reference (1, 1), current (2, 0): 1 - 1/sqrt(2).
        assert!((d.distance().unwrap() - (1.0 - 0.5f64.sqrt())).abs() < 1e-12);
    }

    #[test]
    fn windows_report_shares_latency_and_drift() {
        let line = |target: &str, lp: Option<f32>, e: [f32; 2], s: f64| LogLine { time: s, target: target.into(), seconds: s, mean_logprob: lp, embedding: Some(emb(&e)), prompt_tokens: 10, ..Default::default() };
        let lines = vec![line("local", Some(-0.5), [1.0, 0.0], 1.0), line("local", Some(-3.0), [1.0, 0.0], 2.0), line("remote", None, [0.0, 1.0], 3.0), line("local", Some(-2.0), [0.0, 1.0], 4.0)];
        let w = windows(&lines, 2, -1.8);
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].remote_share, w[0].low_confidence_share), (0.0, Some(0.5)));
        assert_eq!((w[1].remote_share, w[1].low_confidence_share), (0.5, Some(1.0)));
        assert!(w[0].drift.unwrap().abs() < 1e-12);
        assert!((w[1].drift.unwrap() - 1.0).abs() < 1e-12, "orthogonal topics: drift 1");
        assert_eq!((w[0].p50_seconds, w[0].p99_seconds), (2.0, 2.0));
    }
}
