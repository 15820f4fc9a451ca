//! Counters, gauges and histograms of the server, rendered in the Prometheus text format
//! (`GET /metrics`). Plain atomics: nothing here takes a lock on the token path.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Latency buckets, seconds (upper bounds; `+Inf` is implied).
const BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum of observations in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add((seconds.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            cum += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {n}");
    }
}

/// Everything `/metrics` reports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests answered, by (route, HTTP status).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Router decisions, by (target, reason).
    routes: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub embedded_inputs: AtomicU64,
    /// Requests waiting for a slot.
    pub queued: AtomicI64,
    /// Requests being generated.
    pub running: AtomicI64,
    /// Requests dropped because their client went away.
    pub cancelled: AtomicU64,
    pub rejected_busy: AtomicU64,
    /// KV cache bytes held by all slots.
    pub kv_bytes: AtomicU64,
    pub ttft: Histogram,
    pub e2e: Histogram,
    /// Confidence gate verdicts: drafts that passed, drafts found unsure.
    pub confident: AtomicU64,
    pub unsure: AtomicU64,
    /// Model reloads that switched to the new model, and those that kept the old one.
    pub reloads: AtomicU64,
    pub failed_reloads: AtomicU64,
    /// Local answers by confidence (mean log-probability of their first tokens).
    pub low_confidence: AtomicU64,
    pub ok_confidence: AtomicU64,
    /// Drift tracking and the request log.
    pub watch: crate::monitor::Watch,
}

impl Metrics {
    /// Empty metrics watching as `watch` says (drift, request log).
    pub fn with_watch(watch: crate::monitor::Watch) -> Metrics {
        Metrics { watch, ..Default::default() }
    }

    pub fn count_request(&self, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((route.to_string(), status)).or_insert(0) += 1;
    }

    pub fn count_route(&self, target: &'static str, reason: &'static str) {
        *self.routes.lock().unwrap_or_else(|p| p.into_inner()).entry((target, reason)).or_insert(0) += 1;
    }

    pub fn count_answer(&self, low: bool) {
        if low { &self.low_confidence } else { &self.ok_confidence }.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_reload(&self, ok: bool) {
        if ok { &self.reloads } else { &self.failed_reloads }.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_confidence(&self, pass: bool) {
        if pass { &self.confident } else { &self.unsure }.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, slots: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP smelt_requests_total Requests answered, by route and HTTP status.\n# TYPE smelt_requests_total counter");
        for ((route, status), n) in self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "smelt_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP smelt_route_total Router decisions, by target and reason (fallback: a failed escalation answered locally).\n# TYPE smelt_route_total counter");
        for ((target, reason), n) in self.routes.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "smelt_route_total{{target=\"{target}\",reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP smelt_confidence_total Drafts judged by the confidence gate, by outcome (unsure: escalated or answered again).\n# TYPE smelt_confidence_total counter");
        let _ = writeln!(out, "smelt_confidence_total{{outcome=\"confident\"}} {}\nsmelt_confidence_total{{outcome=\"unsure\"}} {}", self.confident.load(Ordering::Relaxed), self.unsure.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP smelt_answers_total Local answers by confidence (mean log-probability of the first {} tokens below {}: low).\n# TYPE smelt_answers_total counter", crate::monitor::WATCH_TOKENS, self.watch.low_logprob);
        let _ = writeln!(out, "smelt_answers_total{{confidence=\"low\"}} {}\nsmelt_answers_total{{confidence=\"ok\"}} {}", self.low_confidence.load(Ordering::Relaxed), self.ok_confidence.load(Ordering::Relaxed));
        if let Some(d) = self.watch.drift_distance() {
            let _ = writeln!(out, "# HELP smelt_drift_embedding_distance 1 - cos(mean embedding of the first prompts, of the latest ones).\n# TYPE smelt_drift_embedding_distance gauge\nsmelt_drift_embedding_distance {d}");
        }
        let counters = [
            ("smelt_prompt_tokens_total", "Prompt tokens of admitted generation requests.", self.prompt_tokens.load(Ordering::Relaxed)),
            ("smelt_generated_tokens_total", "Tokens generated.", self.generated_tokens.load(Ordering::Relaxed)),
            ("smelt_embedded_inputs_total", "Inputs embedded.", self.embedded_inputs.load(Ordering::Relaxed)),
            ("smelt_cancelled_total", "Generations stopped because the client disconnected.", self.cancelled.load(Ordering::Relaxed)),
            ("smelt_rejected_busy_total", "Requests refused with 429 because the queue was full.", self.rejected_busy.load(Ordering::Relaxed)),
            ("smelt_model_reloads_total", "Hot reloads that switched to the new model.", self.reloads.load(Ordering::Relaxed)),
            ("smelt_model_reload_failures_total", "Hot reloads refused (load or self-check failed; the previous model kept serving).", self.failed_reloads.load(Ordering::Relaxed)),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let gauges = [
            ("smelt_queue_depth", "Requests waiting for a slot.", self.queued.load(Ordering::Relaxed).max(0) as f64),
            ("smelt_running_requests", "Requests being generated.", self.running.load(Ordering::Relaxed).max(0) as f64),
            ("smelt_slots", "Sequences the engine decodes together.", slots as f64),
            ("smelt_kv_cache_bytes", "KV cache bytes held by all slots.", self.kv_bytes.load(Ordering::Relaxed) as f64),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        self.ttft.render(&mut out, "smelt_time_to_first_token_seconds", "From the request's arrival to its first generated token.");
        self.e2e.render(&mut out, "smelt_request_duration_seconds", "From the request's arrival to its last token.");
        out
    }
}

/// The remote's failures by kind, its circuit state and the tokens it was sent.
pub fn render_remote(out: &mut String, remote: &crate::remote::Remote) {
    let _ = writeln!(out, "# HELP smelt_remote_errors_total Failed exchanges with the remote, by kind.\n# TYPE smelt_remote_errors_total counter");
    for (kind, n) in remote.errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(out, "smelt_remote_errors_total{{kind=\"{kind}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP smelt_remote_circuit_state The remote's circuit: 0 closed, 1 open, 2 half-open.\n# TYPE smelt_remote_circuit_state gauge\nsmelt_remote_circuit_state {}", remote.circuit().code());
    let _ = writeln!(out, "# HELP smelt_remote_tokens_total Tokens the remote reported using.\n# TYPE smelt_remote_tokens_total counter\nsmelt_remote_tokens_total {}", remote.tokens.load(Ordering::Relaxed));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        for s in [0.001, 0.02, 0.02, 3.0, 500.0] {
            h.observe(s);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.025\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"120\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("x_count 5\n"), "{out}");
        let sum: f64 = out.lines().find(|l| l.starts_with("x_sum")).unwrap()[6..].parse().unwrap();
        assert!((sum - 503.041).abs() < 1e-3, "{sum}");
    }
}
