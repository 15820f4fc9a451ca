//! Trainables built on smelt's training loop ([`smelt_train::Trainer`], AdamW): the last layers
//! of a sentence encoder with a classification head ([`EncoderLayersTask`], `--task
//! encoder-layers`) and LoRA adapters over a frozen decoder ([`LoraTask`], `--task lora`).
//!
//! Only the trained tensors travel: for the encoder, the trained layers' tensors and the head;
//! for LoRA, the adapters' `A` and `B` matrices. The frozen weights never leave the client, and
//! every client of a federation must hold the same base model.
//!
//! A fit runs `epochs x floor(n / batch)` AdamW steps at a constant learning rate (a fresh
//! optimizer each round, as Flower's examples do), gradients clipped to a global norm of 1. With
//! FedProx (`mu > 0`) each step's gradient gains `mu (w - w_start)` on the travelling tensors,
//! the gradient of `(mu / 2) |w - w_start|^2`.

use std::ops::Range;

use smelt_compress::classify_tune::EncoderClassifier;
use smelt_compress::finetune::Finetune;
use smelt_models::backward::params::Slot;
use smelt_train::{Objective, StepStats, TrainConfig, TrainError, Trainer};

use crate::config::FitConfig;
use crate::npy::Tensor;
use crate::trainable::{Outcome, Trainable};
use crate::FedError;

/// Local training settings a task uses where the server's fit config is silent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalTraining {
    /// AdamW's learning rate (the server's `lr` overrides it).
    pub lr: f32,
    /// Threads of the optimizer's update.
    pub threads: usize,
}

/// The tensors of `slots` cut from `params`.
fn cut(params: &[f32], slots: &[Slot]) -> Vec<Tensor> {
    slots.iter().map(|s| Tensor::new(s.shape.clone(), params[s.range.clone()].to_vec())).collect()
}

/// Writes `tensors` (already checked against the slots' shapes) into `params`.
fn paste(params: &mut [f32], slots: &[Slot], tensors: &[Tensor]) {
    for (s, t) in slots.iter().zip(tensors) {
        params[s.range.clone()].copy_from_slice(&t.data);
    }
}

/// FedProx around an objective: the gradient of `(mu / 2) |w - w_start|^2` over `ranges` added.
struct Prox<'o> {
    inner: &'o mut dyn Objective,
    start: Vec<f32>,
    ranges: Vec<Range<usize>>,
    mu: f32,
}

impl Objective for Prox<'_> {
    fn examples(&self) -> usize {
        self.inner.examples()
    }
    fn params(&self) -> &[f32] {
        self.inner.params()
    }
    fn params_mut(&mut self) -> &mut [f32] {
        self.inner.params_mut()
    }
    fn decay(&self) -> Vec<Range<usize>> {
        self.inner.decay()
    }
    fn grad(&mut self, batch: &[usize], grads: &mut [f32]) -> Result<StepStats, TrainError> {
        let mut s = self.inner.grad(batch, grads)?;
        if self.mu > 0.0 {
            let p = self.inner.params();
            let mut sq = 0f64;
            for r in &self.ranges {
                for ((g, w), w0) in grads[r.clone()].iter_mut().zip(&p[r.clone()]).zip(&self.start[r.clone()]) {
                    *g += self.mu * (w - w0);
                    sq += ((w - w0) as f64).powi(2);
                }
            }
            s.loss += 0.5 * self.mu as f64 * sq;
        }
        Ok(s)
    }
    fn validate(&mut self) -> Result<f64, TrainError> {
        self.inner.validate()
    }
}

/// One local fit of `obj`: `(examples, mean step loss)`.
fn local_fit(obj: &mut dyn Objective, slots: &[Slot], cfg: &FitConfig, seed: u64, local: LocalTraining) -> Result<(usize, f64), FedError> {
    let n = obj.examples();
    if n == 0 {
        return Err(FedError::Data("no local training examples".into()));
    }
    let batch = cfg.batch_size.clamp(1, n);
    let steps = (cfg.epochs * (n / batch)).max(1) as u64;
    let lr = cfg.lr.map_or(local.lr, |l| l as f32);
    let tc = TrainConfig {
        steps,
        batch,
        accumulate: 1,
        lr,
        warmup: 0,
        min_lr_ratio: 1.0,
        weight_decay: 0.0,
        clip: 1.0,
        seed,
        eval_every: 0,
        patience: 0,
        checkpoint_every: 0,
        checkpoint: None,
        resume: false,
        threads: local.threads.max(1),
        max_seconds: None,
    };
    let mut prox = Prox { start: obj.params().to_vec(), ranges: slots.iter().map(|s| s.range.clone()).collect(), mu: cfg.proximal_mu as f32, inner: obj };
    let mut sum = 0f64;
    let run = Trainer { cfg: tc, log: None, stop: None }.run(&mut prox, &mut |p| sum += p.loss);
    match run {
        Ok(o) => Ok((n, sum / o.steps.max(1) as f64)),
        Err(e) => {
            // A diverged fit leaves the parameters the server sent.
            prox.inner.params_mut().copy_from_slice(&prox.start);
            Err(FedError::Settings(format!("local training failed: {e} (send a smaller `lr`)")))
        }
    }
}

/// A head of zeros for `labels` over `dim`-dimensional embeddings (every client starts from
/// the same; the server's first parameters replace it anyway).
pub fn zero_head(labels: &[String], dim: usize, l2: f32) -> smelt_models::classify::Head {
    smelt_models::classify::Head {
        format: smelt_models::classify::HEAD_FORMAT.into(),
        version: smelt_models::classify::HEAD_VERSION,
        encoder: String::new(),
        int8: false,
        dim,
        labels: labels.to_vec(),
        weights: vec![vec![0.0; dim]; labels.len()],
        bias: vec![0.0; labels.len()],
        l2,
        train_examples: 0,
        iterations: 0,
        final_loss: 0.0,
    }
}

/// What a tuned task needs beyond the training loop's objective: scoring its current
/// parameters on its evaluation data.
pub trait Scored: Objective + Send {
    fn score(&self) -> Result<Outcome, FedError>;
}

/// The last layers of a sentence encoder and a classification head, trained on local labelled
/// texts and scored on `val` (loss and `accuracy`).
impl Scored for EncoderClassifier<'_> {
    fn score(&self) -> Result<Outcome, FedError> {
        let (loss, accuracy) = EncoderClassifier::score(self, &self.val).map_err(|e| FedError::Settings(e.to_string()))?;
        Ok(Outcome { num_examples: self.val.len(), loss, metrics: vec![("accuracy".into(), accuracy)] })
    }
}

/// LoRA adapters over a frozen decoder, trained on local text by the next-token loss, scored
/// by the mean next-token loss on the held-out text, with `accuracy` the share of positions
/// whose most likely token is the next one (and `perplexity`).
impl Scored for Finetune<'_> {
    fn score(&self) -> Result<Outcome, FedError> {
        let (loss, accuracy) = self.val_score().map_err(|e| FedError::Settings(e.to_string()))?;
        let positions: usize = self.val.iter().map(|e| e.trained_tokens()).sum();
        Ok(Outcome { num_examples: positions, loss, metrics: vec![("accuracy".into(), accuracy), ("perplexity".into(), loss.exp())] })
    }
}

/// A model part trained by the training loop, of which only `slots` travel.
pub struct TunedTask<O> {
    obj: O,
    slots: Vec<Slot>,
    what: String,
    local: LocalTraining,
}

/// The encoder's last layers and a head (`--task encoder-layers`).
pub type EncoderLayersTask<'a> = TunedTask<EncoderClassifier<'a>>;
/// LoRA adapters (`--task lora`).
pub type LoraTask<'a> = TunedTask<Finetune<'a>>;

impl<'a> TunedTask<EncoderClassifier<'a>> {
    /// `obj` trains its last `layers` layers and its head (see [`EncoderClassifier::new`]); its
    /// `val` examples are what [`Trainable::evaluate`] scores (the training data when empty).
    pub fn encoder_layers(mut obj: EncoderClassifier<'a>, layers: usize, local: LocalTraining) -> Self {
        if obj.val.is_empty() {
            obj.val = obj.train.clone();
        }
        let slots = obj.trained_slots();
        let what = format!("encoder's last {layers} layer(s) and a classification head");
        TunedTask { obj, slots, what, local }
    }
}

impl<'a> TunedTask<Finetune<'a>> {
    /// Refuses a model with no held-out text to evaluate on.
    pub fn lora(obj: Finetune<'a>, local: LocalTraining) -> Result<Self, FedError> {
        if obj.val.is_empty() {
            return Err(FedError::Data("no held-out text to evaluate on: give more text or --eval-data".into()));
        }
        let slots = obj.model.params.slots.clone();
        Ok(TunedTask { obj, slots, what: "LoRA adapters".into(), local })
    }
}

impl<O> TunedTask<O> {
    /// The model as it is now.
    pub fn inner(&self) -> &O {
        &self.obj
    }
}

impl<O: Scored> Trainable for TunedTask<O> {
    fn describe(&self) -> String {
        let n: usize = self.slots.iter().map(|s| s.range.len()).sum();
        format!("{}: {} tensors, {n} parameters on the wire, {} local examples", self.what, self.slots.len(), self.obj.examples())
    }
    fn shapes(&self) -> Vec<Vec<usize>> {
        self.slots.iter().map(|s| s.shape.clone()).collect()
    }
    fn get(&self) -> Vec<Tensor> {
        cut(self.obj.params(), &self.slots)
    }
    fn set(&mut self, params: &[Tensor]) {
        paste(self.obj.params_mut(), &self.slots, params);
    }
    fn fit(&mut self, cfg: &FitConfig, seed: u64) -> Result<Outcome, FedError> {
        let (n, loss) = local_fit(&mut self.obj, &self.slots, cfg, seed, self.local)?;
        Ok(Outcome { num_examples: n, loss, metrics: vec![("loss".into(), loss)] })
    }
    fn evaluate(&self) -> Result<Outcome, FedError> {
        self.obj.score()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `L(w) = mean over the batch of 0.5 (w . x_i - y_i)^2`, for checking the FedProx wrapper.
    struct Quadratic {
        w: Vec<f32>,
        x: Vec<Vec<f32>>,
        y: Vec<f32>,
    }

    impl Objective for Quadratic {
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
            Vec::new()
        }
        fn grad(&mut self, batch: &[usize], grads: &mut [f32]) -> Result<StepStats, TrainError> {
            let mut loss = 0f64;
            for &i in batch {
                let r = self.w.iter().zip(&self.x[i]).map(|(a, b)| a * b).sum::<f32>() - self.y[i];
                loss += 0.5 * (r as f64).powi(2) / batch.len() as f64;
                grads.iter_mut().zip(&self.x[i]).for_each(|(g, x)| *g += r * x / batch.len() as f32);
            }
            Ok(StepStats { loss, tokens: 0 })
        }
        fn validate(&mut self) -> Result<f64, TrainError> {
            Ok(0.0)
        }
    }

    fn quadratic() -> Quadratic {
        let x: Vec<Vec<f32>> = (0..12).map(|i| (0..4).map(|j| ((i * 4 + j) as f32 * 0.37).sin()).collect()).collect();
        let y = x.iter().map(|r| r[0] - 2.0 * r[2] + 0.5).collect();
        Quadratic { w: vec![0.3, -0.2, 0.1, 0.4], x, y }
    }

    #[test]
    fn fedprox_gradient_matches_finite_differences_of_its_loss() {
        let mut q = quadratic();
        let start = vec![0.1f32, 0.0, -0.3, 0.2];
        // Only the first three parameters travel (and get the proximal term).
        let mut p = Prox { inner: &mut q, start: start.clone(), ranges: vec![Range { start: 0, end: 3 }], mu: 0.7 };
        let batch: Vec<usize> = (0..12).collect();
        let mut g = vec![0f32; 4];
        p.grad(&batch, &mut g).unwrap();
        #[allow(clippy::needless_range_loop)]
        for k in 0..4 {
            let h = 1e-3f32;
            let mut at = |delta: f32| {
                p.params_mut()[k] += delta;
                let l = p.grad(&batch, &mut [0f32; 4]).unwrap().loss;
                p.params_mut()[k] -= delta;
                l
            };
            let fd = (at(h) - at(-h)) / (2.0 * h as f64);
            assert!((g[k] as f64 - fd).abs() < 1e-3, "parameter {k}: gradient {} vs finite difference {fd}", g[k]);
        }
        // The proximal pull is there on the travelling parameters only.
        let mut plain = vec![0f32; 4];
        quadratic().grad(&batch, &mut plain).unwrap();
        for k in 0..3 {
            assert!((g[k] - plain[k] - 0.7 * (quadratic().w[k] - start[k])).abs() < 1e-6);
        }
        assert_eq!(g[3], plain[3]);
    }

    #[test]
    fn a_local_fit_trains_and_a_diverging_one_restores_the_parameters() {
        let mut q = quadratic();
        let slots = vec![Slot { name: "w".into(), shape: vec![4], range: 0..4 }];
        let before = q.grad(&(0..12).collect::<Vec<_>>(), &mut [0f32; 4]).unwrap().loss;
        let cfg = FitConfig { epochs: 20, batch_size: 4, lr: Some(0.05), proximal_mu: 0.0, round: None };
        let (n, _) = local_fit(&mut q, &slots, &cfg, 1, LocalTraining { lr: 1e-3, threads: 1 }).unwrap();
        assert_eq!(n, 12);
        let after = q.grad(&(0..12).collect::<Vec<_>>(), &mut [0f32; 4]).unwrap().loss;
        assert!(after < 0.5 * before, "loss {before} -> {after}");
        // A batch larger than the data is cut to it; an infinite rate is refused by the loop and
        // leaves the parameters as they were.
        let w = q.w.clone();
        let bad = FitConfig { lr: Some(f64::INFINITY), batch_size: 100, ..cfg };
        assert!(local_fit(&mut q, &slots, &bad, 1, LocalTraining { lr: 1e-3, threads: 1 }).is_err());
        assert_eq!(q.w, w);
    }
}
