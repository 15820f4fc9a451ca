//! Measuring the router: what each signal buys (`smelt route label|eval`).
//!
//! A labelled task (JSON lines `{"prompt" | "messages", "answer"}`) is asked of the local and the
//! remote server as users would (OpenAI API, greedy), and each item gets a [`Record`]: both
//! answers graded, the local answer's confidence over its first `draft` tokens (the gate's two
//! statistics, from the API's log-probabilities) and, with a complexity head, `p(remote)` of the
//! item's embedding (from the local server's `/v1/embeddings`).
//!
//! From the records, each signal gives a score per item (higher: escalate sooner): the draft's
//! `-mean log p`, its `-min top-1 p`, the head's `p(remote)`. Escalating the `k` highest-scoring
//! items gives the point
//! ```text
//! share(k) = k / n,    quality(k) = (sum_{escalated} remote_ok + sum_{kept} local_ok) / n
//! ```
//! and `k = 0..n` the signal's cost-quality curve (with the threshold that draws each point).
//! Two signals combine as "either escalates" over a grid of both thresholds, keeping the
//! best quality at each share. The chosen operating point of a curve is its smallest share whose
//! quality reaches `target x quality(always remote)`.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::remote::{Remote, RemoteConfig};
use crate::router::Complexity;

/// One item of a task.
#[derive(Clone, Debug, Deserialize)]
pub struct Item {
    #[serde(default)]
    pub id: Option<Value>,
    /// A completion prompt, or
    #[serde(default)]
    pub prompt: Option<String>,
    /// chat messages (`[{"role", "content"}]`).
    #[serde(default)]
    pub messages: Option<Vec<Value>>,
    pub answer: String,
}

impl Item {
    /// The texts the router sees (joined by newlines for the complexity signal).
    pub fn text(&self) -> String {
        match (&self.prompt, &self.messages) {
            (Some(p), _) => p.clone(),
            (None, Some(m)) => m.iter().filter_map(|m| m["content"].as_str()).collect::<Vec<_>>().join("\n"),
            (None, None) => String::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteEvalError {
    #[error("{path} line {line}: {reason}")]
    Data { path: String, line: usize, reason: String },
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Server(String),
}

/// Reads a task file: every line an [`Item`] with a prompt or messages and a non-empty answer.
pub fn read_items(path: &std::path::Path) -> Result<Vec<Item>, RouteEvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| RouteEvalError::Io { path: path.display().to_string(), source })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| RouteEvalError::Data { path: path.display().to_string(), line: i + 1, reason };
        let item: Item = serde_json::from_str(line).map_err(|e| bad(format!("not a task item ({{\"prompt\" or \"messages\", \"answer\"}}): {e}")))?;
        if item.prompt.is_none() && item.messages.as_ref().is_none_or(Vec::is_empty) {
            return Err(bad("needs a \"prompt\" or non-empty \"messages\"".into()));
        }
        if words(&item.answer).is_empty() {
            return Err(bad("the answer has no word to grade by".into()));
        }
        out.push(item);
    }
    if out.is_empty() {
        return Err(RouteEvalError::Data { path: path.display().to_string(), line: 0, reason: "no items".into() });
    }
    Ok(out)
}

/// Lower-case words (letters, digits, apostrophes) of `s`.
pub fn words(s: &str) -> Vec<String> {
    s.to_lowercase().split(|c: char| !(c.is_alphanumeric() || c == '\'')).filter(|w| !w.is_empty()).map(str::to_string).collect()
}

/// An answer is right when its first words are the expected answer's words.
pub fn grade(output: &str, answer: &str) -> bool {
    let (o, a) = (words(output), words(answer));
    !a.is_empty() && o.len() >= a.len() && o[..a.len()] == a[..]
}

/// Everything measured for one item.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: Value,
    pub text: String,
    pub answer: String,
    pub local: String,
    pub local_ok: bool,
    pub remote: Option<String>,
    pub remote_ok: Option<bool>,
    /// Per local answer token: `[log p(token), log p(top-1)]` (the gate's statistics over any
    /// draft length come from these).
    pub steps: Vec<[f32; 2]>,
    pub p_remote: Option<f32>,
}

/// What the analysis needs of a record, with the gate's statistics over a given draft length.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    local_ok: bool,
    remote_ok: bool,
    draft_tokens: usize,
    mean_logprob: f32,
    min_top1: f32,
    p_remote: Option<f32>,
}

impl Row {
    fn new(r: &Record, draft: usize) -> Row {
        let (draft_tokens, mean_logprob, min_top1) = draft_confidence(&r.steps, draft);
        Row { local_ok: r.local_ok, remote_ok: r.remote_ok.unwrap_or(false), draft_tokens, mean_logprob, min_top1, p_remote: r.p_remote }
    }
}

/// Where and how to ask.
pub struct CollectOptions {
    pub local: String,
    pub remote: Option<String>,
    pub complexity: Option<Complexity>,
    /// Tokens each answer may have.
    pub max_tokens: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
}

fn client(url: &str, model: &str) -> Result<Remote, RouteEvalError> {
    let mut cfg = RemoteConfig::parse(url, model, None).map_err(RouteEvalError::Server)?;
    cfg.failures = u32::MAX; // an evaluation never trips a circuit
    cfg.retries = 2;
    Ok(Remote::new(cfg))
}

/// The first model a server lists (or the one named `want`).
async fn model_of(url: &str, want: Option<&str>) -> Result<String, RouteEvalError> {
    let ids = client(url, "")?.models().await.map_err(|e| RouteEvalError::Server(format!("{url}: GET /models failed: {e}")))?;
    match want {
        Some(w) if ids.iter().any(|i| i == w) => Ok(w.to_string()),
        Some(w) => Err(RouteEvalError::Server(format!("{url} does not serve `{w}` (it lists {ids:?}); start it with --embed {w}"))),
        None => ids.into_iter().next().ok_or_else(|| RouteEvalError::Server(format!("{url} lists no model"))),
    }
}

/// The request for an item: greedy, `max_tokens`, with the top-1 log-probabilities when asked.
fn request(item: &Item, max_tokens: usize, logprobs: bool) -> (&'static str, Value) {
    let mut body = json!({"max_tokens": max_tokens, "temperature": 0});
    let path = if let Some(p) = &item.prompt {
        body["prompt"] = json!(p);
        if logprobs {
            body["logprobs"] = json!(1);
        }
        "/completions"
    } else {
        body["messages"] = json!(item.messages);
        if logprobs {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(1);
        }
        "/chat/completions"
    };
    (path, body)
}

/// The answer text and, per token, `(log p(token), log p(top-1))` from either endpoint's shape.
fn parse_answer(v: &Value) -> (String, Vec<[f32; 2]>) {
    let c = &v["choices"][0];
    let text = c["text"].as_str().or_else(|| c["message"]["content"].as_str()).unwrap_or_default().to_string();
    let lp = &c["logprobs"];
    let mut steps = Vec::new();
    if let Some(content) = lp["content"].as_array() {
        for t in content {
            let own = t["logprob"].as_f64().unwrap_or(f64::NEG_INFINITY) as f32;
            let top = t["top_logprobs"].as_array().and_then(|a| a.iter().filter_map(|x| x["logprob"].as_f64()).reduce(f64::max)).map_or(own, |x| x as f32);
            steps.push([own, top]);
        }
    } else if let Some(own) = lp["token_logprobs"].as_array() {
        let tops = lp["top_logprobs"].as_array();
        for (i, o) in own.iter().enumerate() {
            let own = o.as_f64().unwrap_or(f64::NEG_INFINITY) as f32;
            let top = tops.and_then(|t| t.get(i)).and_then(Value::as_object).and_then(|m| m.values().filter_map(Value::as_f64).reduce(f64::max)).map_or(own, |x| x as f32);
            steps.push([own, top]);
        }
    }
    (text, steps)
}

/// The gate's statistics over the first `draft` steps: (tokens, mean log p, min top-1 p), as
/// [`crate::engine::Confidence`] computes them (an empty draft: (0, 0, 1)).
pub fn draft_confidence(steps: &[[f32; 2]], draft: usize) -> (usize, f32, f32) {
    let d = &steps[..steps.len().min(draft)];
    if d.is_empty() {
        return (0, 0.0, 1.0);
    }
    let mean = d.iter().map(|s| s[0] as f64).sum::<f64>() / d.len() as f64;
    let min_top1 = d.iter().map(|s| s[1].exp()).fold(1.0f32, f32::min);
    (d.len(), mean as f32, min_top1)
}

/// Asks every item of `items` (both servers, and the embedding when there is a head), calling
/// `progress` after each.
pub async fn collect(items: &[Item], o: &CollectOptions, progress: &(dyn Fn() + Sync)) -> Result<Vec<Record>, RouteEvalError> {
    use futures_util::stream::{self, StreamExt};
    let local = client(&o.local, &model_of(&o.local, None).await?)?;
    let remote = match &o.remote {
        Some(url) => Some(client(url, &model_of(url, None).await?)?),
        None => None,
    };
    let embed = match &o.complexity {
        Some(cx) => Some(client(&o.local, &model_of(&o.local, Some(&crate::run::model_id(&cx.head.encoder))).await?)?),
        None => None,
    };
    let (local, remote, embed) = (&local, remote.as_ref(), embed.as_ref());
    let ask = |item| async move {
        let r = ask(item, o, local, remote, embed).await;
        progress();
        r
    };
    let results: Vec<Result<Record, RouteEvalError>> = stream::iter(items).map(ask).buffered(o.concurrency.max(1)).collect().await;
    results.into_iter().collect()
}

/// [`collect`] on a runtime of its own, for callers without one (the CLI).
pub fn collect_blocking(items: &[Item], o: &CollectOptions, progress: &(dyn Fn() + Sync)) -> Result<Vec<Record>, RouteEvalError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| RouteEvalError::Server(format!("cannot start the client runtime: {e}")))?;
    rt.block_on(collect(items, o, progress))
}

/// One item asked of both servers.
async fn ask(item: &Item, o: &CollectOptions, local: &Remote, remote: Option<&Remote>, embed: Option<&Remote>) -> Result<Record, RouteEvalError> {
    let now = Instant::now();
    let (path, body) = request(item, o.max_tokens, true);
    let v = local.whole(path, body, now).await.map_err(|e| RouteEvalError::Server(format!("the local server: {e}")))?;
    let (text, steps) = parse_answer(&v);
    let remote_text = match remote {
        Some(r) => {
            let (path, body) = request(item, o.max_tokens, false);
            Some(parse_answer(&r.whole(path, body, now).await.map_err(|e| RouteEvalError::Server(format!("the remote server: {e}")))?).0)
        }
        None => None,
    };
    let p_remote = match (embed, &o.complexity) {
        (Some(e), Some(cx)) => {
            let v = e.fetch("/embeddings", json!({"input": item.text()}), now, "data").await.map_err(|e| RouteEvalError::Server(format!("the local server's embeddings: {e}")))?;
            let x: Vec<f32> = v["data"][0]["embedding"].as_array().map(|a| a.iter().filter_map(|x| x.as_f64().map(|x| x as f32)).collect()).unwrap_or_default();
            if x.len() != cx.head.dim {
                return Err(RouteEvalError::Server(format!("the embedding has {} values; the head expects {}", x.len(), cx.head.dim)));
            }
            Some(cx.p_remote(&x))
        }
        _ => None,
    };
    Ok(Record {
        id: item.id.clone().unwrap_or(Value::Null),
        text: item.text(),
        answer: item.answer.clone(),
        local_ok: grade(&text, &item.answer),
        local: text,
        remote_ok: remote_text.as_ref().map(|t| grade(t, &item.answer)),
        remote: remote_text,
        steps,
        p_remote,
    })
}

/// The classifier's training set: the item's text, labelled `remote` when escalating it helps
/// (the local answer wrong and the remote's right; without a remote, the local answer wrong).
pub fn labels(records: &[Record]) -> Vec<Value> {
    records.iter().map(|r| json!({"id": r.id, "text": r.text, "label": if !r.local_ok && r.remote_ok.unwrap_or(true) { "remote" } else { "local" }})).collect()
}

/// One point of a curve.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Point {
    pub share: f64,
    pub quality: f64,
    /// The signal's threshold(s) that draw it (for a combination, both).
    pub thresholds: [f64; 2],
}

/// A signal's cost-quality curve and its chosen operating point.
#[derive(Clone, Debug, Serialize)]
pub struct Curve {
    pub signal: String,
    /// What the thresholds mean.
    pub rule: String,
    pub points: Vec<Point>,
    /// The smallest share reaching the target (`None`: no point does).
    pub chosen: Option<Point>,
    /// Area under the curve over shares 0..1 (higher: better routing).
    pub area: f64,
}

/// Settings of an operating point to report.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Thresholds {
    pub mean_logprob: f32,
    pub min_top1: f32,
    pub p_remote: Option<f32>,
    /// Tokens of the draft (serve's --confidence-tokens).
    pub draft: usize,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub items: usize,
    pub local_quality: f64,
    pub remote_quality: f64,
    /// Escalating exactly the items the local model gets wrong and the remote right.
    pub oracle: Point,
    pub target: f64,
    pub curves: Vec<Curve>,
    /// The server's routing at `thresholds` (confidence, and complexity when measured).
    pub at: Thresholds,
    pub at_point: Point,
    pub at_meets_target: bool,
    /// How well each signal separates the items (AUROC: 0.5 is chance).
    pub separation: Vec<Separation>,
}

/// A signal's AUROC for the two questions routing asks: is the local answer wrong, and does
/// escalating help (local wrong, remote right). A signal can answer the first well and the
/// second not at all, when the items the local model doubts are the ones the remote fails too.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Separation {
    pub signal: String,
    pub local_wrong: Option<f64>,
    pub escalation_helps: Option<f64>,
}

/// The probability that a random positive item scores above a random negative one (ties count
/// half); `None` without both kinds.
pub fn auroc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let (n_pos, n_neg) = (positive.iter().filter(|&&p| p).count(), positive.iter().filter(|&&p| !p).count());
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    // Mann-Whitney U from the positives' rank sum (tied scores share their mean rank).
    let rank_sum: f64 = smelt_models::stats::ranks(scores).iter().zip(positive).filter(|(_, &p)| p).map(|(r, _)| r).sum();
    Some((rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0) / (n_pos * n_neg) as f64)
}

/// How a signal scores an item, and the threshold rule that escalates it.
struct Signal {
    name: &'static str,
    rule: &'static str,
    /// Higher: escalate sooner. The threshold of a cut at score `s` is `to_threshold(s)`.
    score: fn(&Row) -> f64,
    to_threshold: fn(f64) -> f64,
}

const SIGNALS: [Signal; 3] = [
    Signal { name: "confidence", rule: "escalate when the draft's mean log-probability < threshold", score: |r| -(r.mean_logprob as f64), to_threshold: |s| -s },
    Signal { name: "top1", rule: "escalate when a drafted token's top-1 probability < threshold", score: |r| -(r.min_top1 as f64), to_threshold: |s| -s },
    Signal { name: "complexity", rule: "escalate when p(remote) >= threshold", score: |r| r.p_remote.unwrap_or(0.0) as f64, to_threshold: |s| s },
];

fn quality(records: &[Row], escalate: impl Fn(&Row) -> bool) -> Point {
    let n = records.len() as f64;
    let (mut k, mut ok) = (0usize, 0usize);
    for r in records {
        if escalate(r) {
            k += 1;
            ok += r.remote_ok as usize;
        } else {
            ok += r.local_ok as usize;
        }
    }
    Point { share: k as f64 / n, quality: ok as f64 / n, thresholds: [f64::NAN; 2] }
}

/// The curve of escalating items in decreasing `score`; ties escalate together.
fn curve(records: &[Row], score: impl Fn(&Row) -> f64, to_threshold: impl Fn(f64) -> f64) -> Vec<Point> {
    let n = records.len() as f64;
    let mut order: Vec<&Row> = records.iter().collect();
    order.sort_by(|a, b| score(b).total_cmp(&score(a)));
    let mut ok = records.iter().filter(|r| r.local_ok).count() as i64;
    let mut points = vec![Point { share: 0.0, quality: ok as f64 / n, thresholds: [f64::INFINITY, f64::NAN] }];
    let mut i = 0;
    while i < order.len() {
        let s = score(order[i]);
        while i < order.len() && score(order[i]) == s {
            ok += order[i].remote_ok as i64 - order[i].local_ok as i64;
            i += 1;
        }
        points.push(Point { share: i as f64 / n, quality: ok as f64 / n, thresholds: [to_threshold(s), f64::NAN] });
    }
    points
}

/// The upper envelope of points: at each share, the best quality any point of at most that
/// share reaches.
fn front(mut points: Vec<Point>) -> Vec<Point> {
    points.sort_by(|a, b| a.share.total_cmp(&b.share).then(b.quality.total_cmp(&a.quality)));
    let mut out: Vec<Point> = Vec::new();
    for p in points {
        if out.last().is_none_or(|l| p.quality > l.quality) {
            out.push(p);
        }
    }
    out
}

fn area(points: &[Point]) -> f64 {
    // Step function: each point's quality holds until the next point's share.
    let mut a = 0.0;
    for w in points.windows(2) {
        a += (w[1].share - w[0].share) * w[0].quality;
    }
    if let Some(l) = points.last() {
        a += (1.0 - l.share) * l.quality;
    }
    a
}

fn finish(signal: &str, rule: &str, points: Vec<Point>, goal: f64) -> Curve {
    let chosen = points.iter().filter(|p| p.quality >= goal).min_by(|a, b| a.share.total_cmp(&b.share)).copied();
    let area = area(&front(points.clone()));
    Curve { signal: signal.into(), rule: rule.into(), points, chosen, area }
}

/// Distinct cut points of a score: at most `k` quantiles.
fn cuts(records: &[Row], score: fn(&Row) -> f64, k: usize) -> Vec<f64> {
    let mut s: Vec<f64> = records.iter().map(score).collect();
    s.sort_by(f64::total_cmp);
    s.dedup();
    if s.len() <= k {
        return s;
    }
    (0..k).map(|i| s[i * (s.len() - 1) / (k - 1)]).collect()
}

/// Every signal's curve, the combination's, and the point at `at`.
pub fn analyse(records: &[Record], target: f64, at: Thresholds) -> Report {
    let rows: Vec<Row> = records.iter().map(|r| Row::new(r, at.draft)).collect();
    let records = &rows[..];
    let n = records.len().max(1) as f64;
    let local_quality = records.iter().filter(|r| r.local_ok).count() as f64 / n;
    let remote_quality = records.iter().filter(|r| r.remote_ok).count() as f64 / n;
    let goal = target * remote_quality;
    let has_head = records.iter().all(|r| r.p_remote.is_some());
    let mut curves = Vec::new();
    for s in SIGNALS.iter().filter(|s| s.name != "complexity" || has_head) {
        curves.push(finish(s.name, s.rule, curve(records, s.score, s.to_threshold), goal));
    }
    // Random escalation: the expected quality at each share is the straight line.
    let random = (0..=20).map(|i| {
        let share = i as f64 / 20.0;
        Point { share, quality: local_quality + share * (remote_quality - local_quality), thresholds: [f64::NAN; 2] }
    });
    curves.push(finish("random", "escalate a random share", random.collect(), goal));
    if has_head {
        let (a, b) = (&SIGNALS[0], &SIGNALS[2]);
        let mut grid = Vec::new();
        for &ca in &cuts(records, a.score, 40) {
            for &cb in &cuts(records, b.score, 40) {
                let mut p = quality(records, |r| (a.score)(r) >= ca || (b.score)(r) >= cb);
                p.thresholds = [(a.to_threshold)(ca), (b.to_threshold)(cb)];
                grid.push(p);
            }
        }
        curves.push(finish("confidence+complexity", "escalate when either signal does: thresholds [mean log-probability, p(remote)]", front(grid), goal));
    }
    let at_point = {
        let mut p = quality(records, |r| (r.draft_tokens > 0 && (r.mean_logprob < at.mean_logprob || r.min_top1 < at.min_top1)) || at.p_remote.is_some_and(|t| r.p_remote.is_some_and(|p| p >= t)));
        p.thresholds = [at.mean_logprob as f64, at.p_remote.map_or(f64::NAN, f64::from)];
        p
    };
    let oracle = quality(records, |r| !r.local_ok && r.remote_ok);
    let wrong: Vec<bool> = records.iter().map(|r| !r.local_ok).collect();
    let helps: Vec<bool> = records.iter().map(|r| !r.local_ok && r.remote_ok).collect();
    let separation = SIGNALS
        .iter()
        .filter(|s| s.name != "complexity" || has_head)
        .map(|s| {
            let scores: Vec<f64> = records.iter().map(s.score).collect();
            Separation { signal: s.name.into(), local_wrong: auroc(&scores, &wrong), escalation_helps: auroc(&scores, &helps) }
        })
        .collect();
    Report { items: records.len(), local_quality, remote_quality, oracle, target, curves, at, at_meets_target: at_point.quality >= goal, at_point, separation }
}

/// The curves as an SVG line chart (quality against the share escalated).
pub fn plot(report: &Report, title: &str) -> String {
    let (w, h, m) = (640.0, 420.0, 56.0);
    let ys: Vec<f64> = report.curves.iter().flat_map(|c| c.points.iter().map(|p| p.quality)).chain([report.local_quality, report.remote_quality, report.oracle.quality]).collect();
    let lo = (ys.iter().copied().fold(f64::INFINITY, f64::min) * 20.0).floor() / 20.0;
    let hi = (ys.iter().copied().fold(f64::NEG_INFINITY, f64::max) * 20.0).ceil() / 20.0;
    let hi = if hi <= lo { lo + 0.05 } else { hi };
    let x = |s: f64| m + s * (w - 1.5 * m);
    let y = |q: f64| h - m - (q - lo) / (hi - lo) * (h - 1.8 * m);
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#7f7f7f", "#d62728", "#9467bd"];
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    s += &format!("<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n", w / 2.0, xml(title));
    s += &format!("<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"black\"/><line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{3}\" stroke=\"black\"/>\n", x(0.0), y(lo), x(1.0), y(hi));
    for i in 0..=10 {
        let share = i as f64 / 10.0;
        s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.0}%</text>\n", x(share), y(lo) + 16.0, share * 100.0);
    }
    let steps = ((hi - lo) / 0.05).round() as usize;
    for i in 0..=steps {
        let q = lo + i as f64 * 0.05;
        s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.2}</text><line x1=\"{}\" y1=\"{2}\" x2=\"{}\" y2=\"{2}\" stroke=\"#eee\"/>\n", x(0.0) - 6.0, y(q) + 4.0, q, x(0.0), x(1.0));
    }
    s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">share of requests escalated</text>\n", x(0.5), h - 8.0);
    s += &format!("<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {0})\" text-anchor=\"middle\">quality (accuracy)</text>\n", y((lo + hi) / 2.0));
    let goal = report.target * report.remote_quality;
    let (x0, x1, yg, pct) = (x(0.0), x(1.0), y(goal), report.target * 100.0);
    s += &format!("<line x1=\"{x0}\" y1=\"{yg}\" x2=\"{x1}\" y2=\"{yg}\" stroke=\"#d62728\" stroke-dasharray=\"4 3\"/><text x=\"{x1}\" y=\"{}\" text-anchor=\"end\" fill=\"#d62728\">{pct:.0}% of always-remote</text>\n", yg - 4.0);
    for (i, c) in report.curves.iter().enumerate() {
        let color = colors[i % colors.len()];
        let mut d = String::new();
        for (k, p) in c.points.iter().enumerate() {
            // Step-free polyline through the points (the curve is dense).
            d += &format!("{}{:.1},{:.1} ", if k == 0 { "M" } else { "L" }, x(p.share), y(p.quality));
        }
        let dash = if c.signal == "random" { " stroke-dasharray=\"2 3\"" } else { "" };
        s += &format!("<path d=\"{d}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.6\"{dash}/>\n");
        s += &format!("<text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>\n", x(0.62), y(lo) - 12.0 - 15.0 * i as f64, xml(&c.signal));
    }
    s += &format!("<circle cx=\"{}\" cy=\"{}\" r=\"4\" fill=\"black\"/><text x=\"{}\" y=\"{}\">oracle</text>\n", x(report.oracle.share), y(report.oracle.quality), x(report.oracle.share) + 6.0, y(report.oracle.quality) - 4.0);
    s += &format!("<circle cx=\"{}\" cy=\"{}\" r=\"4\" fill=\"none\" stroke=\"black\"/><text x=\"{}\" y=\"{}\">defaults</text>\n", x(report.at_point.share), y(report.at_point.quality), x(report.at_point.share) + 6.0, y(report.at_point.quality) + 14.0);
    s + "</svg>\n"
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Counts of records by (local_ok, remote_ok), for the text report.
pub fn agreement(records: &[Record]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        let k = match (r.local_ok, r.remote_ok.unwrap_or(false)) {
            (true, true) => "both right",
            (true, false) => "only local right",
            (false, true) => "only remote right",
            (false, false) => "both wrong",
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(local_ok: bool, remote_ok: bool, lp: f32, p: f32) -> Record {
        Record { id: Value::Null, text: String::new(), answer: "a".into(), local: String::new(), local_ok, remote: None, remote_ok: Some(remote_ok), steps: vec![[lp, lp], [-50.0, -0.1]], p_remote: Some(p) }
    }

    #[test]
    fn grading_compares_first_words() {
        assert!(grade(" Time, said she", "time"));
        assert!(grade("\nsports.", "Sports"));
        assert!(!grade(" times", "time"));
        assert!(!grade("", "time"));
        assert!(grade("New York is", "new york"));
        assert!(!grade("New", "new york"));
    }

    #[test]
    fn auroc_counts_ordered_pairs_and_ties() {
        assert_eq!(auroc(&[0.1, 0.4, 0.35, 0.8], &[false, true, false, true]), Some(1.0));
        assert_eq!(auroc(&[0.9, 0.1], &[false, true]), Some(0.0));
        // Positives {0.5, 0.2}, negatives {0.5, 0.1}: pairs won 1 + 0.5 (tie) + 1 + 0 = 2.5 of 4.
        assert_eq!(auroc(&[0.5, 0.2, 0.5, 0.1], &[true, true, false, false]), Some(0.625));
        assert_eq!(auroc(&[1.0, 2.0], &[true, true]), None);
    }

    #[test]
    fn the_gate_statistics_match_the_engine() {
        let steps = [[-0.1f32, -0.1f32], [-2.0, -0.5], [-0.3, -0.3], [-9.0, -0.01]];
        let (n, mean, top1) = draft_confidence(&steps, 3);
        assert_eq!(n, 3);
        assert!((mean - (-2.4 / 3.0)).abs() < 1e-6);
        assert!((top1 - (-0.5f32).exp()).abs() < 1e-6);
        assert_eq!(draft_confidence(&[], 4), (0, 0.0, 1.0));
    }

    #[test]
    fn curves_count_escalations_in_score_order() {
        // Local right on the two confident items; remote right on all but the last.
        let r = vec![rec(true, true, -0.1, 0.1), rec(true, false, -0.2, 0.2), rec(false, true, -3.0, 0.9), rec(false, false, -4.0, 0.8)];
        let rows: Vec<Row> = r.iter().map(|r| Row::new(r, 1)).collect();
        let c = curve(&rows, SIGNALS[0].score, SIGNALS[0].to_threshold);
        let q: Vec<(f64, f64)> = c.iter().map(|p| (p.share, p.quality)).collect();
        assert_eq!(q, vec![(0.0, 0.5), (0.25, 0.5), (0.5, 0.75), (0.75, 0.5), (1.0, 0.5)]);
        assert_eq!(c[2].thresholds[0], -3.0);
        let rep = analyse(&r, 0.95, Thresholds { mean_logprob: -2.5, min_top1: 0.0, p_remote: None, draft: 1 });
        assert_eq!((rep.local_quality, rep.remote_quality), (0.5, 0.5));
        assert_eq!((rep.oracle.share, rep.oracle.quality), (0.25, 0.75));
        // The default thresholds escalate the two unsure items.
        assert_eq!((rep.at_point.share, rep.at_point.quality), (0.5, 0.75));
        let conf = rep.curves.iter().find(|c| c.signal == "confidence").unwrap();
        assert_eq!(conf.chosen.unwrap().share, 0.0);
        assert!(rep.curves.iter().any(|c| c.signal == "confidence+complexity"));
    }
}
