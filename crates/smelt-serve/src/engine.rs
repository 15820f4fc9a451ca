//! The engine loop: one thread owns the decoder, its thread pool and a fixed set of slots (one
//! KV cache each), and runs every active sequence through the weights together, one step at a
//! time (continuous batching, as llama.cpp's server slots and vLLM's scheduler do).
//!
//! Each step stacks, for every active slot, either its next generated token (decoding) or the
//! next chunk of its prompt (prompt processing, at most [`STEP_TOKENS`] prompt tokens per step
//! over all slots, so a long prompt never stalls the others' decoding for more than a step).
//! Requests wait in a bounded queue until a slot is free; the HTTP side answers 429 when the
//! queue is full. A request whose client went away (its event receiver dropped) is dropped at
//! the next step. A free slot keeps its tokens: a new request that starts with them (the next
//! turn of a chat) reuses that prefix instead of processing it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smelt_kernels::pool::ThreadPool;
use smelt_models::{Llama, Sampler, SamplerConfig, Scratch, Session, Step, TextStream, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;

/// Prompt tokens processed per step over all slots.
pub const STEP_TOKENS: usize = 512;

/// What a request asks the engine for.
#[derive(Debug)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    /// At most this many tokens (the engine also stops when the slot's context is full).
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub sampler: SamplerConfig,
    /// Report each token's log-probability and this many alternatives (`None`: no log-probs).
    pub logprobs: Option<usize>,
    /// Generate past end-of-generation tokens (llama.cpp's `ignore_eos`, for benchmarks).
    pub ignore_eos: bool,
    /// When the generation must end (the request's time limit).
    pub deadline: Option<Instant>,
    pub events: UnboundedSender<Event>,
    pub enqueued: Instant,
    /// Hold the first tokens back until their confidence is known (the router's draft).
    pub gate: Option<Gate>,
    /// For the request log: the router's reason and the prompt's embedding (drift tracking).
    pub note: Note,
}

/// What the request log records of a request besides what the engine sees.
#[derive(Clone, Debug, Default)]
pub struct Note {
    pub reason: &'static str,
    pub embedding: Option<Vec<f32>>,
}

/// The router's confidence gate: the first `tokens` generated tokens are held back, and the
/// engine reports [`Event::Confidence`] before anything else. A draft whose mean log-probability
/// (`1/n sum_i log p(t_i)`) or lowest top-1 probability (`min_i max_v p_i(v)`) falls below its
/// threshold is dropped (nothing follows the verdict); otherwise the held tokens follow and the
/// generation goes on, so a confident draft costs nothing extra.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gate {
    pub tokens: usize,
    pub min_mean_logprob: f32,
    pub min_top1: f32,
}

/// How sure the model was of a draft.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Confidence {
    /// Tokens judged (fewer than the gate's when the answer ended sooner).
    pub tokens: usize,
    pub mean_logprob: f32,
    pub min_top1: f32,
}

impl Confidence {
    /// An empty draft (the answer ended at once) passes: there is nothing to doubt.
    pub fn passes(&self, g: &Gate) -> bool {
        self.tokens == 0 || (self.mean_logprob >= g.min_mean_logprob && self.min_top1 >= g.min_top1)
    }
}

/// A gate being judged: the statistics so far and the events held back.
struct Judging {
    gate: Gate,
    sum: f64,
    min_top1: f32,
    n: usize,
    held: Vec<Event>,
    /// `None` while judging; then whether the draft passed.
    verdict: Option<bool>,
}

impl Judging {
    fn confidence(&self) -> Confidence {
        let mean = if self.n == 0 { 0.0 } else { (self.sum / self.n as f64) as f32 };
        Confidence { tokens: self.n, mean_logprob: mean, min_top1: if self.n == 0 { 1.0 } else { self.min_top1 } }
    }
}

/// A token's log-probability and the most likely alternatives at its position.
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<(String, Vec<u8>, f32)>,
}

/// Why a generation ended, in the API's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    /// The request's time limit passed.
    Timeout,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length | Finish::Timeout => "length",
        }
    }
}

/// What the engine sends back, in order: tokens, then one `Done` or `Error`.
#[derive(Debug)]
pub enum Event {
    /// One generated token: the text that became final with it (may be empty while a possible
    /// stop string or a UTF-8 character is incomplete) and its log-probability if asked for.
    Token { text: String, logprob: Option<TokenLogprob> },
    Done { finish: Finish, prompt_tokens: usize, cached_tokens: usize, completion_tokens: usize },
    Error(String),
    /// The gate's verdict, first of all events when the request has a gate; when `pass` is
    /// false nothing follows.
    Confidence { confidence: Confidence, pass: bool },
}

/// The HTTP side's handle: submits requests, never blocks.
#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<GenRequest>,
    /// Tokens one slot holds (prompt + generation).
    pub context: usize,
    pub slots: usize,
}

/// Why a request was not queued.
#[derive(Debug)]
pub enum SubmitError {
    /// The queue is full: try again later.
    Busy,
    /// The engine has stopped.
    Gone,
}

impl EngineHandle {
    pub fn submit(&self, req: GenRequest, metrics: &Metrics) -> Result<(), SubmitError> {
        metrics.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(req) {
            Ok(()) => Ok(()),
            Err(e) => {
                metrics.queued.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Busy,
                    TrySendError::Disconnected(_) => SubmitError::Gone,
                })
            }
        }
    }
}

/// Settings of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences decoded together.
    pub slots: usize,
    /// Tokens per slot.
    pub context: usize,
    /// Requests waiting for a slot before new ones get 429.
    pub queue: usize,
}

/// A request being served.
struct Active {
    req: GenRequest,
    sampler: Sampler,
    stream: TextStream,
    /// Prompt tokens still to process.
    pending: Vec<u32>,
    /// The token to feed next while decoding.
    next: Option<u32>,
    generated: usize,
    cached: usize,
    first_token: bool,
    judging: Option<Judging>,
    /// Sum and count of the log-probabilities of the first `WATCH_TOKENS` tokens (monitoring).
    watched: (f64, usize),
}

impl Active {
    /// Sends `e`, or holds it back while the gate is judging.
    fn emit(&mut self, e: Event) {
        match &mut self.judging {
            Some(j) if j.verdict.is_none() => j.held.push(e),
            _ => {
                let _ = self.req.events.send(e);
            }
        }
    }

    /// Ends the judging: the verdict first, then (if it passed) the held events. Returns the
    /// verdict (true when there is no gate).
    fn judge(&mut self, metrics: &Metrics) -> bool {
        let Some(j) = &mut self.judging else { return true };
        if let Some(v) = j.verdict {
            return v;
        }
        let confidence = j.confidence();
        let pass = confidence.passes(&j.gate);
        j.verdict = Some(pass);
        let held = std::mem::take(&mut j.held);
        metrics.count_confidence(pass);
        let _ = self.req.events.send(Event::Confidence { confidence, pass });
        if pass {
            for e in held {
                let _ = self.req.events.send(e);
            }
        }
        pass
    }
}

struct Slot {
    sess: Session,
    active: Option<Active>,
}

/// Starts the engine thread; it runs until every handle is dropped and its work is done.
pub fn start(model: Llama, tok: Arc<Tokenizer>, pool: ThreadPool, cfg: &EngineConfig, metrics: Arc<Metrics>, stop: Arc<AtomicBool>) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue);
    let context = cfg.context.clamp(2, model.cfg.ctx_train);
    let handle = EngineHandle { tx, context, slots: cfg.slots };
    let slots = cfg.slots;
    let thread = std::thread::Builder::new()
        .name("smelt-engine".into())
        .spawn(move || {
            let mut engine = Engine { model, tok, pool, slots: (0..slots).map(|_| None).collect(), context, metrics, scratch: Scratch::default() };
            engine.run(rx, &stop);
        })?;
    Ok((handle, thread))
}

struct Engine {
    model: Llama,
    tok: Arc<Tokenizer>,
    pool: ThreadPool,
    /// Sessions are created when first used (an idle slot holds no KV cache).
    slots: Vec<Option<Slot>>,
    context: usize,
    metrics: Arc<Metrics>,
    scratch: Scratch,
}

impl Engine {
    fn run(&mut self, rx: Receiver<GenRequest>, stop: &AtomicBool) {
        let mut open = true;
        loop {
            // Admit waiting requests into free slots; block only when nothing is running.
            while open && self.free_slot_exists() {
                let req = if self.busy() == 0 {
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(r) => r,
                        Err(RecvTimeoutError::Timeout) => {
                            if stop.load(Ordering::Relaxed) {
                                open = false;
                            }
                            break;
                        }
                        Err(RecvTimeoutError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                } else {
                    match rx.try_recv() {
                        Ok(r) => r,
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                };
                self.metrics.queued.fetch_sub(1, Ordering::Relaxed);
                self.admit(req);
            }
            if self.busy() == 0 {
                if !open {
                    return;
                }
                continue;
            }
            self.step();
        }
    }

    fn busy(&self) -> usize {
        self.slots.iter().filter(|s| s.as_ref().is_some_and(|s| s.active.is_some())).count()
    }

    fn free_slot_exists(&self) -> bool {
        self.slots.iter().any(|s| s.as_ref().is_none_or(|s| s.active.is_none()))
    }

    /// Puts `req` in the free slot whose held tokens share the longest prefix with its prompt.
    fn admit(&mut self, req: GenRequest) {
        if req.events.is_closed() {
            return;
        }
        if req.prompt.is_empty() || req.prompt.len() >= self.context {
            let _ = req.events.send(Event::Error(format!("the prompt has {} tokens; this server's context holds {} (prompt and answer together)", req.prompt.len(), self.context)));
            return;
        }
        let common = |s: &Option<Slot>| s.as_ref().map_or(0, |s| s.sess.tokens().iter().zip(&req.prompt).take_while(|(a, b)| a == b).count());
        let Some(i) = (0..self.slots.len()).filter(|&i| self.slots[i].as_ref().is_none_or(|s| s.active.is_none())).max_by_key(|&i| common(&self.slots[i])) else {
            return;
        };
        let (model, context) = (&self.model, self.context);
        let slot = self.slots[i].get_or_insert_with(|| Slot { sess: model.session(context), active: None });
        let mut reuse = slot.sess.tokens().iter().zip(&req.prompt).take_while(|(a, b)| a == b).count();
        if reuse == req.prompt.len() {
            reuse -= 1; // the last prompt token runs again to give its logits
        }
        slot.sess.truncate(reuse);
        let mut sampler = Sampler::new(req.sampler.clone());
        for &t in &req.prompt {
            sampler.accept(t);
        }
        let stream = TextStream::new(req.stop.clone());
        let pending = req.prompt[reuse..].to_vec();
        self.metrics.prompt_tokens.fetch_add(req.prompt.len() as u64, Ordering::Relaxed);
        self.metrics.running.fetch_add(1, Ordering::Relaxed);
        let judging = req.gate.map(|gate| Judging { gate, sum: 0.0, min_top1: 1.0, n: 0, held: Vec::new(), verdict: None });
        slot.active = Some(Active { req, sampler, stream, pending, next: None, generated: 0, cached: reuse, first_token: true, judging, watched: (0.0, 0) });
    }

    /// One forward pass over every active slot, then a token for each slot that has finished
    /// its prompt.
    fn step(&mut self) {
        // Drop requests whose client is gone or whose time is up.
        let now = Instant::now();
        for slot in self.slots.iter_mut().flatten() {
            let Some(a) = &slot.active else { continue };
            if a.req.events.is_closed() {
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                finish_slot(slot, &self.metrics, None);
            } else if a.req.deadline.is_some_and(|d| now >= d) {
                finish_slot(slot, &self.metrics, Some(Finish::Timeout));
            }
        }
        // Inputs, by slot: a decoding slot's next token; prompt chunks within the step's budget.
        let mut feed: Vec<Option<Vec<u32>>> = vec![None; self.slots.len()];
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(t) = slot.as_ref().and_then(|s| s.active.as_ref()).and_then(|a| a.next) {
                feed[i] = Some(vec![t]);
            }
        }
        let mut budget = STEP_TOKENS;
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(a) = slot.as_ref().and_then(|s| s.active.as_ref()) else { continue };
            if a.next.is_none() && !a.pending.is_empty() && budget > 0 {
                let n = a.pending.len().min(budget);
                budget -= n;
                feed[i] = Some(a.pending[..n].to_vec());
            }
        }
        // The stepped slots in slot order; row k of the logits is `order[k]`'s.
        let order: Vec<usize> = (0..feed.len()).filter(|&i| feed[i].is_some()).collect();
        if order.is_empty() {
            return;
        }
        let result = {
            let mut steps: Vec<Step> = Vec::with_capacity(order.len());
            for (slot, tokens) in self.slots.iter_mut().zip(&feed) {
                if let (Some(s), Some(tokens)) = (slot.as_mut(), tokens) {
                    steps.push(Step { sess: &mut s.sess, tokens });
                }
            }
            self.model.forward_batch(&self.pool, &mut self.scratch, &mut steps).map(<[f32]>::to_vec)
        };
        let logits = match result {
            Ok(r) => r,
            Err(e) => {
                // A failed step (a corrupt weight giving NaN): every request in it gets the error.
                for &i in &order {
                    if let Some(slot) = self.slots[i].as_mut() {
                        if let Some(a) = &slot.active {
                            let _ = a.req.events.send(Event::Error(format!("the model failed: {e}")));
                        }
                        finish_slot(slot, &self.metrics, None);
                        slot.sess.truncate(0);
                    }
                }
                return;
            }
        };
        let vocab = self.model.cfg.vocab;
        let kv: usize = self.slots.iter().flatten().map(|s| s.sess.kv.bytes()).sum();
        self.metrics.kv_bytes.store(kv as u64, Ordering::Relaxed);
        for (k, &i) in order.iter().enumerate() {
            let fed = feed[i].as_ref().map_or(0, Vec::len);
            let Some(slot) = self.slots[i].as_mut() else { continue };
            let Some(a) = slot.active.as_mut() else { continue };
            if a.next.is_none() {
                a.pending.drain(..fed);
                if !a.pending.is_empty() {
                    continue; // more prompt to process before the first token
                }
            }
            let row = &logits[k * vocab..(k + 1) * vocab];
            let finish = next_token(a, row, &self.tok, slot.sess.len(), self.context, &self.metrics);
            if let Some(f) = finish {
                finish_slot(slot, &self.metrics, Some(f));
            }
        }
    }
}

/// Samples the next token of `a` from `row`, sends it, and says whether generation ended.
fn next_token(a: &mut Active, row: &[f32], tok: &Tokenizer, held: usize, context: usize, metrics: &Metrics) -> Option<Finish> {
    if a.first_token {
        a.first_token = false;
        metrics.ttft.observe(a.req.enqueued.elapsed().as_secs_f64());
    }
    if a.generated >= a.req.max_tokens {
        return Some(Finish::Length);
    }
    let id = a.sampler.sample(row);
    if tok.is_eog(id) && !a.req.ignore_eos {
        return Some(Finish::Stop);
    }
    a.sampler.accept(id);
    a.generated += 1;
    metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
    let logprob = a.req.logprobs.map(|k| logprob_of(row, id, k, tok));
    let (text, stopped) = a.stream.push(tok, id);
    let text = text.to_string();
    a.emit(Event::Token { text, logprob });
    let watching = a.watched.1 < crate::monitor::WATCH_TOKENS;
    let judging = a.judging.as_ref().is_some_and(|j| j.verdict.is_none());
    // One pass over the logits serves both (the first tokens only).
    let (lp, top1) = if watching || judging { confidence_of(row, id) } else { (0.0, 1.0) };
    if watching {
        a.watched.0 += lp as f64;
        a.watched.1 += 1;
    }
    if let Some(j) = a.judging.as_mut().filter(|j| j.verdict.is_none()) {
        j.sum += lp as f64;
        j.min_top1 = j.min_top1.min(top1);
        j.n += 1;
        if j.n >= j.gate.tokens && !a.judge(metrics) {
            return Some(Finish::Stop); // dropped: `finish_slot` sends nothing more
        }
    }
    if stopped {
        return Some(Finish::Stop);
    }
    if a.generated >= a.req.max_tokens || held + 1 >= context {
        return Some(Finish::Length);
    }
    a.next = Some(id);
    None
}

/// Ends the slot's request: the rest of its text and `Done` (`None`: nobody is listening, or
/// an error was sent already). The slot keeps its tokens for prefix reuse.
fn finish_slot(slot: &mut Slot, metrics: &Metrics, finish: Option<Finish>) {
    let Some(mut a) = slot.active.take() else { return };
    metrics.running.fetch_sub(1, Ordering::Relaxed);
    if let Some(f) = finish {
        let rest = a.stream.finish().to_string();
        if !rest.is_empty() {
            a.emit(Event::Token { text: rest, logprob: None });
        }
        // An answer shorter than the draft is judged on what it has.
        if !a.judge(metrics) {
            return;
        }
        // Counted and logged before `Done`, so that a client that reads /metrics after its
        // answer sees it.
        let seconds = a.req.enqueued.elapsed().as_secs_f64();
        metrics.e2e.observe(seconds);
        let mean = (a.watched.1 > 0).then(|| (a.watched.0 / a.watched.1 as f64) as f32);
        if let Some(m) = mean {
            metrics.count_answer(m < metrics.watch.low_logprob);
        }
        if metrics.watch.logging() {
            let embedding = a.req.note.embedding.as_deref().map(crate::embeddings::encode_base64);
            let reason = if a.req.note.reason.is_empty() { "default" } else { a.req.note.reason };
            metrics.watch.write(&crate::monitor::LogLine { time: crate::monitor::now(), target: "local".into(), reason: reason.into(), prompt_tokens: a.req.prompt.len(), completion_tokens: a.generated, seconds, mean_logprob: mean, embedding });
        }
        let _ = a.req.events.send(Event::Done { finish: f, prompt_tokens: a.req.prompt.len(), cached_tokens: a.cached, completion_tokens: a.generated });
    }
}

/// `(log p(id), max_v p(v))` under `softmax(row)`: the gate's two statistics for one token.
pub fn confidence_of(row: &[f32], id: u32) -> (f32, f32) {
    let (max, lse) = smelt_models::sampling::log_sum_exp(row);
    (row[id as usize] - lse, (max - lse).exp())
}

/// The log-probability of `id` under the model's distribution (`log softmax(row)`), and the `k`
/// most likely tokens with theirs.
pub fn logprob_of(row: &[f32], id: u32, k: usize, tok: &Tokenizer) -> TokenLogprob {
    let (_, lse) = smelt_models::sampling::log_sum_exp(row);
    let entry = |t: u32| {
        let bytes = tok.token_bytes(t, false);
        (String::from_utf8_lossy(&bytes).into_owned(), bytes, row[t as usize] - lse)
    };
    let mut top = Vec::new();
    if k > 0 {
        let mut idx: Vec<u32> = (0..row.len() as u32).collect();
        let k = k.min(idx.len());
        idx.select_nth_unstable_by(k - 1, |&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        idx.truncate(k);
        idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        top = idx.into_iter().map(entry).collect();
    }
    let (token, bytes, logprob) = entry(id);
    TokenLogprob { token, bytes, logprob, top }
}
