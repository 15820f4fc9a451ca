//! The training loop on a small least-squares problem: it converges, a seeded run is
//! deterministic, a run interrupted mid-epoch and resumed ends with the same weights bit for bit,
//! a diverging learning rate stops with a message and keeps the last checkpoint, a checkpoint
//! that cannot be written leaves the previous one whole, and early stopping restores the best.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use smelt_train::checkpoint::Checkpoint;
use smelt_train::order::SplitMix64;
use smelt_train::{Objective, StepStats, Stop, TrainConfig, TrainError, Trainer};

/// `y = X w* + noise` with 8 features; the parameters are `w` (decayed) and a bias (not).
struct LeastSquares {
    x: Vec<[f32; 8]>,
    y: Vec<f32>,
    w: Vec<f32>,
    /// Raise `flag` on this grad call (a Ctrl-C in the middle of a run).
    interrupt_at: Option<(usize, &'static AtomicBool)>,
    calls: usize,
    /// Validation losses to report in turn (to script early stopping), else the training loss.
    scripted_val: Vec<f64>,
}

fn problem(n: usize) -> LeastSquares {
    let mut r = SplitMix64(3);
    let mut u = || (r.next_u64() >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0;
    let truth: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let row: [f32; 8] = std::array::from_fn(|_| u());
        y.push(row.iter().zip(&truth).map(|(a, b)| a * b).sum::<f32>() + 0.5 + 0.01 * u());
        x.push(row);
    }
    LeastSquares { x, y, w: vec![0.0; 9], interrupt_at: None, calls: 0, scripted_val: Vec::new() }
}

impl LeastSquares {
    fn loss(&self, idx: impl Iterator<Item = usize>) -> f64 {
        let (mut s, mut n) = (0f64, 0);
        for i in idx {
            let e = self.x[i].iter().zip(&self.w).map(|(a, b)| a * b).sum::<f32>() + self.w[8] - self.y[i];
            s += 0.5 * (e * e) as f64;
            n += 1;
        }
        s / n as f64
    }
}

impl Objective for LeastSquares {
    fn examples(&self) -> usize {
        self.x.len()
    }
    fn params(&self) -> &[f32] {
        &self.w
    }
    fn params_mut(&mut self) -> &mut [f32] {
        &mut self.w
    }
    fn decay(&self) -> Vec<Range<usize>> {
        std::iter::once(0..8).collect()
    }
    fn grad(&mut self, batch: &[usize], grads: &mut [f32]) -> Result<StepStats, TrainError> {
        self.calls += 1;
        if let Some((at, flag)) = self.interrupt_at {
            if self.calls == at {
                flag.store(true, Ordering::Relaxed);
            }
        }
        let k = 1.0 / batch.len() as f32;
        for &i in batch {
            let e = self.x[i].iter().zip(&self.w).map(|(a, b)| a * b).sum::<f32>() + self.w[8] - self.y[i];
            grads.iter_mut().zip(&self.x[i]).for_each(|(g, x)| *g += k * e * x);
            grads[8] += k * e;
        }
        Ok(StepStats { loss: self.loss(batch.iter().copied()), tokens: batch.len() as u64 })
    }
    fn validate(&mut self) -> Result<f64, TrainError> {
        if !self.scripted_val.is_empty() {
            return Ok(self.scripted_val.remove(0));
        }
        Ok(self.loss(0..self.x.len()))
    }
}

fn config(steps: u64) -> TrainConfig {
    TrainConfig { steps, batch: 16, accumulate: 2, lr: 0.05, warmup: 5, min_lr_ratio: 0.1, weight_decay: 0.0, clip: 10.0, seed: 11, eval_every: 0, patience: 0, checkpoint_every: 0, checkpoint: None, resume: false, threads: 2, max_seconds: None }
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("smelt-train-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("run.ckpt")
}

fn train(obj: &mut LeastSquares, cfg: TrainConfig, stop: Option<&AtomicBool>, log: Option<&mut Vec<u8>>) -> Result<smelt_train::Outcome, TrainError> {
    let mut t = Trainer { cfg, log: log.map(|l| l as &mut dyn std::io::Write), stop };
    t.run(obj, &mut |_| {})
}

#[test]
fn converges_and_logs_every_step() {
    let mut obj = problem(200);
    let before = obj.loss(0..200);
    let mut log = Vec::new();
    let out = train(&mut obj, config(300), None, Some(&mut log)).unwrap();
    assert_eq!((out.stop, out.steps, out.tokens), (Stop::Finished, 300, 300 * 32));
    let after = obj.loss(0..200);
    assert!(after < 1e-3 * before && after < 1e-3, "loss {before} -> {after}");
    let lines: Vec<serde_json::Value> = String::from_utf8(log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 300);
    assert_eq!(lines[299]["step"], 300);
    assert!(lines[0]["loss"].as_f64().unwrap() > lines[299]["loss"].as_f64().unwrap());
}

#[test]
fn seeded_runs_are_identical_and_seeds_matter() {
    let run = |seed| {
        let mut obj = problem(100);
        train(&mut obj, TrainConfig { seed, ..config(40) }, None, None).unwrap();
        obj.w.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn resume_after_an_interrupt_mid_epoch_gives_the_same_weights() {
    // 100 examples, batch 16: 6 micro-batches an epoch; 20 steps of 2 cross several epochs.
    let path = temp("resume");
    let mut whole = problem(100);
    train(&mut whole, TrainConfig { checkpoint: Some(path.with_extension("whole")), checkpoint_every: 3, ..config(20) }, None, None).unwrap();

    static FLAG: AtomicBool = AtomicBool::new(false);
    let mut part = problem(100);
    part.interrupt_at = Some((15, &FLAG)); // during step 8, micro-batch 15: epoch 2, batch 3
    let cfg = TrainConfig { checkpoint: Some(path.clone()), checkpoint_every: 3, ..config(20) };
    let out = train(&mut part, cfg.clone(), Some(&FLAG), None).unwrap();
    assert_eq!((out.stop, out.steps), (Stop::Interrupted, 8));
    assert_eq!(Checkpoint::load(&path).unwrap().state.step, 8);

    let mut resumed = problem(100);
    let mut log = Vec::new();
    let out = train(&mut resumed, TrainConfig { resume: true, ..cfg.clone() }, None, Some(&mut log)).unwrap();
    assert_eq!((out.stop, out.steps), (Stop::Finished, 20));
    assert_eq!(String::from_utf8(log).unwrap().lines().count(), 12, "steps 9..=20 logged");
    let bits = |w: &[f32]| w.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&resumed.w), bits(&whole.w));

    // Other settings than the checkpoint's are refused.
    let e = train(&mut problem(100), TrainConfig { resume: true, lr: 0.01, ..cfg }, None, None).unwrap_err().to_string();
    assert!(e.contains("other settings") && e.contains("lr=0.01"), "{e}");
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_checkpoint() {
    let path = temp("nan");
    let mut obj = problem(100);
    // Without clipping, a huge learning rate overflows within a few steps.
    let cfg = TrainConfig { lr: 1e30, warmup: 0, clip: 0.0, checkpoint: Some(path.clone()), checkpoint_every: 1, ..config(50) };
    let e = train(&mut obj, cfg, None, None).unwrap_err();
    let TrainError::NonFinite { step, .. } = &e else { panic!("{e}") };
    let msg = e.to_string();
    assert!(msg.contains("lower the learning rate") && msg.contains("is kept at"), "{msg}");
    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!(ck.state.step, step - 1);
    assert!(ck.params.iter().all(|p| p.is_finite()));
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

#[test]
fn a_failed_checkpoint_write_leaves_the_previous_one() {
    let path = temp("disk");
    let mut obj = problem(100);
    train(&mut obj, TrainConfig { checkpoint: Some(path.clone()), ..config(4) }, None, None).unwrap();
    let before = std::fs::read(&path).unwrap();
    // The temporary file's name is taken by a directory: the write fails as a full disk would.
    let tmp = smelt_formats::fsutil::temp_path_for(&path);
    std::fs::create_dir_all(&tmp).unwrap();
    let e = train(&mut problem(100), TrainConfig { checkpoint: Some(path.clone()), ..config(6) }, None, None).unwrap_err();
    assert!(matches!(e, TrainError::Io { .. }), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // A full device is reported, not ignored.
    if std::path::Path::new("/dev/full").exists() {
        let e = train(&mut problem(100), TrainConfig { checkpoint: Some("/dev/full".into()), ..config(2) }, None, None).unwrap_err();
        assert!(e.to_string().contains("/dev/full"), "{e}");
    }
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

#[test]
fn early_stopping_restores_the_best_evaluation() {
    let mut obj = problem(100);
    obj.scripted_val = vec![5.0, 3.0, 4.0, 4.5, 1.0];
    let mut seen = Vec::new();
    let mut t = Trainer { cfg: TrainConfig { eval_every: 2, patience: 2, ..config(20) }, log: None, stop: None };
    let out = t.run(&mut obj, &mut |p| seen.push((p.step, p.val))).unwrap();
    assert_eq!((out.stop, out.steps, out.best_val), (Stop::EarlyStopped, 8, Some(3.0)));
    assert!(out.restored_best);
    assert_eq!(seen.iter().filter(|(_, v)| v.is_some()).count(), 4);
    // The restored weights are the ones of step 4 (the best evaluation).
    let mut at4 = problem(100);
    static STOP4: AtomicBool = AtomicBool::new(false);
    at4.interrupt_at = Some((8, &STOP4)); // grad call 8 is step 4's second micro-batch
    let mut t = Trainer { cfg: config(20), log: None, stop: Some(&STOP4) };
    t.run(&mut at4, &mut |_| {}).unwrap();
    assert_eq!(obj.w, at4.w);
}

#[test]
fn impossible_settings_are_refused() {
    for (cfg, says) in [
        (TrainConfig { steps: 0, ..config(1) }, "steps"),
        (TrainConfig { batch: 0, ..config(1) }, "batch"),
        (TrainConfig { batch: 1000, ..config(1) }, "only 100 examples"),
        (TrainConfig { lr: f32::NAN, ..config(1) }, "lr"),
        (TrainConfig { lr: -1.0, ..config(1) }, "lr"),
        (TrainConfig { min_lr_ratio: 2.0, ..config(1) }, "min ratio"),
        (TrainConfig { resume: true, ..config(1) }, "checkpoint path"),
    ] {
        let e = train(&mut problem(100), cfg, None, None).unwrap_err().to_string();
        assert!(e.contains(says), "{says}: {e}");
    }
    // A file that is not a checkpoint.
    let path = temp("bogus");
    std::fs::write(&path, b"not a checkpoint").unwrap();
    let e = train(&mut problem(100), TrainConfig { resume: true, checkpoint: Some(path.clone()), ..config(1) }, None, None).unwrap_err().to_string();
    assert!(e.contains("checkpoint"), "{e}");
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}
