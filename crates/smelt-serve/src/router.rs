//! The hybrid router: each generation request is answered by the local model unless a signal
//! says the remote should take it, and private data never leaves. Signals, in order:
//!
//! 1. no remote configured: local (`no_remote`);
//! 2. personal or secret data ([`crate::privacy`]): local (`privacy`), or, in redact mode, the
//!    data replaced by `[LABEL]` placeholders before anything goes out;
//! 3. the caller's `x-smelt-route: local|remote|auto` header (`caller`);
//! 4. a prompt longer than the local context: remote (`context`);
//! 5. the remote budget (requests per minute, tokens per day) spent: local (`budget`);
//! 6. the remote's circuit open: local (`circuit_open`);
//! 7. the complexity classifier (a logistic head on the prompt's embedding, trained with
//!    `smelt classify` on prompts labelled `local`/`remote` by `smelt route label`) gives
//!    `p(remote) >= threshold`: remote (`complexity`);
//! 8. the confidence gate: the local model drafts the first tokens; a draft whose mean
//!    log-probability or lowest top-1 probability is under its threshold is dropped before
//!    anything is sent, and the request goes remote (`confidence`);
//! 9. otherwise local (`default`).
//!
//! Signals 7 and 8 run only when the remote could take the request (budget left, circuit not
//! open), so a request never pays for a draft it cannot act on.
//!
//! Every decision is counted in `/metrics` (`smelt_route_total{target,reason}`) and explained in
//! the response's `x-smelt-route` header; an escalation whose remote fails is answered locally
//! with `x-smelt-fallback` naming the failure (graceful degradation).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use smelt_models::classify::Head;

use crate::engine::Gate;
use crate::privacy::{Detector, Finding};
use crate::remote::Remote;

/// Which model answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Local,
    Remote,
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Target::Local => "local",
            Target::Remote => "remote",
        }
    }
}

/// A routing decision and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub target: Target,
    pub reason: &'static str,
    /// Private data must be redacted before the request leaves (redact mode).
    pub redact: bool,
}

/// What to do with private data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivacyMode {
    /// Keep the request local.
    Pin,
    /// Replace the data by placeholders, then route as usual.
    Redact,
}

/// Caps on what goes to the remote.
#[derive(Clone, Copy, Debug, Default)]
pub struct Budget {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
}

/// The complexity signal: a classifier head on the encoder's embedding of the request's texts.
#[derive(Clone, Debug)]
pub struct Complexity {
    pub head: Head,
    /// Index of the head's `remote` label (the local model is expected to fail).
    pub remote: usize,
    /// Escalate when `p(remote) >= threshold`.
    pub threshold: f32,
}

impl Complexity {
    /// Checks that `head` has a `remote` label.
    pub fn new(head: Head, threshold: f32) -> Result<Complexity, String> {
        let remote = head.labels.iter().position(|l| l == "remote").ok_or_else(|| format!("the complexity head's labels are {:?}; it needs a \"remote\" label (train it on `smelt route label` output)", head.labels))?;
        Ok(Complexity { head, remote, threshold })
    }

    /// `p(remote)` for one embedding.
    pub fn p_remote(&self, x: &[f32]) -> f32 {
        self.head.probabilities(x)[self.remote]
    }
}

/// The router's settings and state.
pub struct Router {
    pub remote: Remote,
    pub detector: Detector,
    pub privacy: PrivacyMode,
    pub budget: Budget,
    pub complexity: Option<Complexity>,
    pub confidence: Option<Gate>,
    /// Times of the remote requests of the last minute; (day start, tokens) for the daily cap.
    recent: Mutex<(VecDeque<Instant>, Instant, u64)>,
}

/// The caller's `x-smelt-route` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Override {
    Local,
    Remote,
    Auto,
}

impl Override {
    pub fn parse(v: Option<&str>) -> Result<Override, String> {
        match v.map(str::trim) {
            None | Some("") | Some("auto") => Ok(Override::Auto),
            Some("local") => Ok(Override::Local),
            Some("remote") => Ok(Override::Remote),
            Some(other) => Err(format!("x-smelt-route must be local, remote or auto, got {other:?}")),
        }
    }
}

impl Router {
    pub fn new(remote: Remote, detector: Detector, privacy: PrivacyMode, budget: Budget) -> Router {
        Router { remote, detector, privacy, budget, complexity: None, confidence: None, recent: Mutex::new((VecDeque::new(), Instant::now(), 0)) }
    }

    /// With the complexity and confidence signals.
    pub fn with_signals(mut self, complexity: Option<Complexity>, confidence: Option<Gate>) -> Router {
        self.complexity = complexity;
        self.confidence = confidence;
        self
    }

    /// Whether the remote could take a request now (budget left, circuit not open), without
    /// counting one: the content signals run only then.
    pub fn could_escalate(&self) -> bool {
        self.budget_allows(false) && !self.circuit_blocks()
    }

    /// The decision for a request a signal wants remote: remote unless the budget is spent or
    /// the circuit open (then local, saying which).
    pub fn escalate(&self, reason: &'static str, redact: bool) -> Decision {
        let local = |reason| Decision { target: Target::Local, reason, redact: false };
        if !self.budget_allows(true) {
            return local("budget");
        }
        if self.circuit_blocks() {
            return local("circuit_open");
        }
        Decision { target: Target::Remote, reason, redact }
    }

    fn circuit_blocks(&self) -> bool {
        self.remote.circuit().code() == 1 && !self.circuit_cooled()
    }

    /// Private data in any of `texts`.
    pub fn findings(&self, texts: &[&str]) -> Vec<Finding> {
        texts.iter().flat_map(|t| self.detector.scan(t)).collect()
    }

    /// Decides for a request whose texts hold `private` findings, whose prompt has `tokens`
    /// tokens against a local `context`.
    pub fn decide(&self, private: bool, over: Override, tokens: usize, context: usize) -> Decision {
        let local = |reason| Decision { target: Target::Local, reason, redact: false };
        if private && self.privacy == PrivacyMode::Pin {
            return local("privacy");
        }
        let wants = match over {
            Override::Local => return local("caller"),
            Override::Remote => Some("caller"),
            Override::Auto if tokens >= context => Some("context"),
            Override::Auto => None,
        };
        let Some(reason) = wants else { return local("default") };
        self.escalate(reason, private)
    }

    fn circuit_cooled(&self) -> bool {
        matches!(self.remote.circuit(), crate::remote::Circuit::Open { until } if Instant::now() >= until)
    }

    /// Whether the budget allows one more remote request (and, with `count`, counts it if so).
    fn budget_allows(&self, count: bool) -> bool {
        let mut g = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while g.0.front().is_some_and(|&t| now.duration_since(t) > Duration::from_secs(60)) {
            g.0.pop_front();
        }
        if now.duration_since(g.1) > Duration::from_secs(86_400) {
            g.1 = now;
            g.2 = 0;
        }
        let used_tokens = self.remote.tokens.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(g.2);
        if self.budget.requests_per_minute.is_some_and(|n| g.0.len() as u64 >= n) || self.budget.tokens_per_day.is_some_and(|n| used_tokens >= n) {
            return false;
        }
        if count {
            g.0.push_back(now);
        }
        true
    }

    /// Forgets the tokens counted so far today (so that the daily cap starts now).
    pub fn reset_day(&self) {
        let mut g = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        g.1 = Instant::now();
        g.2 = self.remote.tokens.load(std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::RemoteConfig;

    fn router(privacy: PrivacyMode, budget: Budget) -> Router {
        Router::new(Remote::new(RemoteConfig::parse("http://127.0.0.1:9/v1", "big", None).unwrap()), Detector::default(), privacy, budget)
    }

    #[test]
    fn decisions_follow_the_documented_order() {
        let r = router(PrivacyMode::Pin, Budget::default());
        let d = |private, over, tokens| r.decide(private, over, tokens, 100);
        assert_eq!(d(false, Override::Auto, 10), Decision { target: Target::Local, reason: "default", redact: false });
        assert_eq!(d(false, Override::Auto, 100).target, Target::Remote);
        assert_eq!(d(false, Override::Auto, 100).reason, "context");
        assert_eq!(d(false, Override::Remote, 10).reason, "caller");
        assert_eq!(d(false, Override::Local, 500), Decision { target: Target::Local, reason: "caller", redact: false });
        // Private data is pinned even when the caller asks for the remote or the prompt is long.
        assert_eq!(d(true, Override::Remote, 10).reason, "privacy");
        assert_eq!(d(true, Override::Auto, 500).target, Target::Local);
        let r = router(PrivacyMode::Redact, Budget::default());
        assert_eq!(r.decide(true, Override::Remote, 10, 100), Decision { target: Target::Remote, reason: "caller", redact: true });
    }

    #[test]
    fn the_budget_caps_requests_per_minute() {
        let r = router(PrivacyMode::Pin, Budget { requests_per_minute: Some(2), tokens_per_day: None });
        assert_eq!(r.decide(false, Override::Remote, 1, 100).target, Target::Remote);
        assert_eq!(r.decide(false, Override::Remote, 1, 100).target, Target::Remote);
        assert_eq!(r.decide(false, Override::Remote, 1, 100).reason, "budget");
        let r = router(PrivacyMode::Pin, Budget { requests_per_minute: None, tokens_per_day: Some(100) });
        r.remote.tokens.store(150, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(r.decide(false, Override::Remote, 1, 100).reason, "budget");
        r.reset_day();
        assert_eq!(r.decide(false, Override::Remote, 1, 100).target, Target::Remote);
    }

    #[test]
    fn override_headers_parse() {
        assert_eq!(Override::parse(None).unwrap(), Override::Auto);
        assert_eq!(Override::parse(Some(" remote ")).unwrap(), Override::Remote);
        assert!(Override::parse(Some("cloud")).is_err());
    }
}
