//! The training loop over an [`Objective`].
//!
//! Step `s` (from 0) draws `accumulate` micro-batches of `batch` examples: micro-batch `k = s
//! accumulate + i` is positions `(k mod B) batch ..` of epoch `k / B`'s permutation ([`crate::order`];
//! `B` = whole batches per epoch). Their gradients are averaged, clipped by global norm, and
//! AdamW takes one step at the schedule's learning rate. Because the examples of a step depend
//! only on the seed and the step, a checkpoint needs no data cursor, and `resume` repeats exactly
//! what an uninterrupted run computes.

use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::checkpoint::{Checkpoint, CheckpointView, LoopState};
use crate::optim::{clip_global_norm, AdamW, Schedule};
use crate::order::permutation;
use crate::TrainError;

/// A model, its data and its loss, as the loop sees them.
pub trait Objective {
    /// Training examples (indices `0..examples()` are drawn in batches).
    fn examples(&self) -> usize;
    fn params(&self) -> &[f32];
    fn params_mut(&mut self) -> &mut [f32];
    /// Parameter ranges that get weight decay (by convention the matrices).
    fn decay(&self) -> Vec<Range<usize>>;
    /// Adds to `grads` the gradient of the mean loss over the examples `batch`.
    fn grad(&mut self, batch: &[usize], grads: &mut [f32]) -> Result<StepStats, TrainError>;
    /// The validation loss (lower is better), for evaluation and early stopping.
    fn validate(&mut self) -> Result<f64, TrainError>;
}

/// What one micro-batch's gradient reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepStats {
    pub loss: f64,
    /// Tokens the model ran forward and backward.
    pub tokens: u64,
}

/// The loop's settings.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Optimizer steps in all.
    pub steps: u64,
    /// Examples per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimizer step.
    pub accumulate: usize,
    pub lr: f32,
    pub warmup: u64,
    /// The schedule's floor as a fraction of `lr`.
    pub min_lr_ratio: f32,
    pub weight_decay: f32,
    /// Global gradient norm limit (0: no clipping).
    pub clip: f32,
    pub seed: u64,
    /// Evaluate every this many steps (0: never).
    pub eval_every: u64,
    /// Stop after this many evaluations without improvement (0: never).
    pub patience: u32,
    /// Write a checkpoint every this many steps (0: only when interrupted or finished).
    pub checkpoint_every: u64,
    pub checkpoint: Option<PathBuf>,
    /// Continue from `checkpoint`.
    pub resume: bool,
    /// Threads for the optimizer's update (the result does not depend on them).
    pub threads: usize,
    /// Stop (with a checkpoint, like at the last step) once this run has trained this long; the
    /// schedule still runs over `steps`.
    pub max_seconds: Option<f64>,
}

impl TrainConfig {
    /// Refuses settings the loop cannot run with `examples` training examples.
    pub fn check(&self, examples: usize) -> Result<(), TrainError> {

        if self.steps == 0 {
            return Err(TrainError::setting("steps", self.steps, "train for at least one step"));
        }
        if self.batch == 0 || self.accumulate == 0 {
            return Err(TrainError::setting("batch", format!("{} x {}", self.batch, self.accumulate), "batch and accumulation must be at least 1"));
        }
        if examples < self.batch {
            return Err(TrainError::setting("batch", self.batch, format!("the data has only {examples} examples: give more data or a smaller batch")));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(TrainError::setting("lr", self.lr, "must be a positive number"));
        }
        let ok = (0.0..=1.0).contains(&self.min_lr_ratio) && self.weight_decay >= 0.0 && self.weight_decay < 1.0 / self.lr && self.clip >= 0.0 && self.clip.is_finite();
        if !ok {
            return Err(TrainError::setting("schedule", format!("min ratio {}, decay {}, clip {}", self.min_lr_ratio, self.weight_decay, self.clip), "min ratio in [0, 1], decay in [0, 1/lr), clip >= 0"));
        }
        if self.max_seconds.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
            return Err(TrainError::setting("max time", format!("{:?} s", self.max_seconds), "must be a positive number of seconds"));
        }
        if self.resume && self.checkpoint.is_none() {
            return Err(TrainError::setting("resume", "true", "needs a checkpoint path"));
        }
        Ok(())
    }

    /// What a resumed run must agree on.
    fn fingerprint(&self, params: usize, examples: usize) -> String {
        format!("params={params} examples={examples} seed={} batch={} accumulate={} steps={} lr={} warmup={} min_lr_ratio={} weight_decay={} clip={}", self.seed, self.batch, self.accumulate, self.steps, self.lr, self.warmup, self.min_lr_ratio, self.weight_decay, self.clip)
    }
}

/// Where a run stands, for progress bars.
#[derive(Clone, Debug)]
pub struct Progress {
    pub step: u64,
    pub total: u64,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f32,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub eta_s: f64,
    /// The validation loss when this step evaluated.
    pub val: Option<f64>,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Finished,
    EarlyStopped,
    /// The stop flag was raised; a checkpoint was written (when a path was given).
    Interrupted,
    /// `max_seconds` ran out (the parameters are kept as they are: no best restored unless
    /// evaluations ran).
    TimeLimit,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub stop: Stop,
    pub steps: u64,
    pub last_loss: f64,
    pub best_val: Option<f64>,
    pub tokens: u64,
    pub seconds: f64,
    /// Whether the parameters were set back to the best evaluation's.
    pub restored_best: bool,
}

/// The loop.
pub struct Trainer<'a> {
    pub cfg: TrainConfig,
    /// JSON-lines log: a line per step and per evaluation.
    pub log: Option<&'a mut dyn Write>,
    /// Raised (by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Option<&'a AtomicBool>,
}

impl Trainer<'_> {
    /// Trains `obj`; `progress` is called after every step.
    pub fn run(&mut self, obj: &mut dyn Objective, progress: &mut dyn FnMut(&Progress)) -> Result<Outcome, TrainError> {
        let cfg = self.cfg.clone();
        let n = obj.examples();
        cfg.check(n)?;
        let np = obj.params().len();
        let fingerprint = cfg.fingerprint(np, n);
        let mut opt = AdamW { threads: cfg.threads, ..AdamW::new(np, cfg.weight_decay) };
        let mut state = LoopState { fingerprint: fingerprint.clone(), ..Default::default() };
        let mut best: Option<Vec<f32>> = None;
        if cfg.resume {
            let path = cfg.checkpoint.as_ref().ok_or_else(|| TrainError::setting("resume", "true", "needs a checkpoint path"))?;
            let ck = Checkpoint::load(path)?;
            if ck.state.fingerprint != fingerprint {
                return Err(TrainError::Checkpoint { path: path.clone(), reason: format!("was written by a run with other settings or data:\n  checkpoint: {}\n  this run:   {fingerprint}\ngive the same settings, or start afresh without --resume", ck.state.fingerprint) });
            }
            obj.params_mut().copy_from_slice(&ck.params);
            (opt.m, opt.v, opt.t) = (ck.m, ck.v, ck.adam_t);
            state = ck.state;
            best = ck.best;
        }
        let sched = Schedule { peak: cfg.lr, warmup: cfg.warmup, total: cfg.steps, min_ratio: cfg.min_lr_ratio };
        let decay = obj.decay();
        let per_epoch = (n / cfg.batch) as u64;
        let mut grads = vec![0f32; np];
        let started = Instant::now();
        let (start_step, start_tokens, start_elapsed) = (state.step, state.tokens, state.elapsed_s);
        let mut order: Option<(u64, Vec<usize>)> = None;
        let mut last_loss = f64::NAN;
        let mut last_saved: Option<u64> = None;
        let mut stop = Stop::Finished;
        while state.step < cfg.steps {
            let step = state.step;
            grads.iter_mut().for_each(|g| *g = 0.0);
            let (mut loss, mut tokens) = (0f64, 0u64);
            for i in 0..cfg.accumulate as u64 {
                let k = step * cfg.accumulate as u64 + i;
                let epoch = k / per_epoch;
                if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    order = Some((epoch, permutation(n, cfg.seed, epoch)));
                }
                let perm = &order.as_ref().map(|(_, p)| p.as_slice()).unwrap_or_default();
                let at = (k % per_epoch) as usize * cfg.batch;
                let s = obj.grad(&perm[at..at + cfg.batch], &mut grads)?;
                loss += s.loss;
                tokens += s.tokens;
            }
            let a = cfg.accumulate as f32;
            loss /= a as f64;
            grads.iter_mut().for_each(|g| *g /= a);
            let kept = || match (&cfg.checkpoint, last_saved.or((cfg.resume).then_some(start_step))) {
                (Some(p), Some(s)) => format!("the checkpoint of step {s} is kept at {}", p.display()),
                _ => "no checkpoint was written".to_string(),
            };
            if !loss.is_finite() {
                return Err(TrainError::NonFinite { what: "loss", value: loss, step: step + 1, kept: kept() });
            }
            let norm = clip_global_norm(&mut grads, cfg.clip);
            if !norm.is_finite() {
                return Err(TrainError::NonFinite { what: "gradient norm", value: norm, step: step + 1, kept: kept() });
            }
            let lr = sched.lr(step);
            opt.step(obj.params_mut(), &grads, lr, &decay);
            if obj.params().iter().any(|p| !p.is_finite()) {
                return Err(TrainError::NonFinite { what: "parameters", value: f64::NAN, step: step + 1, kept: kept() });
            }
            state.step += 1;
            state.tokens += tokens;
            last_loss = loss;
            let run_s = started.elapsed().as_secs_f64();
            state.elapsed_s = start_elapsed + run_s;
            let tps = (state.tokens - start_tokens) as f64 / run_s.max(1e-9);
            let eta = run_s / (state.step - start_step) as f64 * (cfg.steps - state.step) as f64;
            let epoch = (state.step * cfg.accumulate as u64) as f64 / per_epoch as f64;
            self.line(serde_json::json!({"step": state.step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": norm, "tokens": state.tokens, "tokens_per_s": tps, "elapsed_s": state.elapsed_s}))?;
            let mut val = None;
            if cfg.eval_every > 0 && (state.step.is_multiple_of(cfg.eval_every) || state.step == cfg.steps) {
                let v = obj.validate()?;
                val = Some(v);
                if state.best_val.is_none_or(|b| v < b) {
                    state.best_val = Some(v);
                    state.bad_evals = 0;
                    best = Some(obj.params().to_vec());
                } else {
                    state.bad_evals += 1;
                }
                self.line(serde_json::json!({"step": state.step, "val_loss": v, "best_val_loss": state.best_val}))?;
                if cfg.patience > 0 && state.bad_evals >= cfg.patience {
                    stop = Stop::EarlyStopped;
                }
            }
            progress(&Progress { step: state.step, total: cfg.steps, epoch, loss, lr, grad_norm: norm, tokens_per_s: tps, eta_s: eta, val });
            let interrupted = self.stop.is_some_and(|f| f.load(Ordering::Relaxed));
            if interrupted {
                stop = Stop::Interrupted;
            } else if stop == Stop::Finished && cfg.max_seconds.is_some_and(|m| run_s >= m) && state.step < cfg.steps {
                stop = Stop::TimeLimit;
            }
            let due = cfg.checkpoint_every > 0 && state.step.is_multiple_of(cfg.checkpoint_every);
            if let Some(path) = &cfg.checkpoint {
                if due || interrupted || stop != Stop::Finished || state.step == cfg.steps {
                    CheckpointView { state: &state, params: obj.params(), m: &opt.m, v: &opt.v, adam_t: opt.t, best: best.as_deref() }.save(path)?;
                    last_saved = Some(state.step);
                }
            }
            if stop != Stop::Finished {
                break;
            }
        }
        let restored_best = stop != Stop::Interrupted && best.as_ref().is_some_and(|b| {
            obj.params_mut().copy_from_slice(b);
            true
        });
        Ok(Outcome { stop, steps: state.step, last_loss, best_val: state.best_val, tokens: state.tokens, seconds: state.elapsed_s, restored_best })
    }

    fn line(&mut self, v: serde_json::Value) -> Result<(), TrainError> {
        if let Some(w) = self.log.as_mut() {
            writeln!(w, "{v}").and_then(|()| w.flush()).map_err(|source| TrainError::Io { path: "training log".into(), source })?;
        }
        Ok(())
    }
}
