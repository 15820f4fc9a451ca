//! Fine-tuning a sentence encoder for a classification task: the encoder's last layers trained
//! together with the linear head on labelled texts (the head starts from the frozen-embedding
//! logistic regression, so training starts from that classifier).
//!
//! For a batch of texts with labels `y` (`n` texts, `c` classes, width `d`):
//! ```text
//! e = normalize(mean_pool(BERT(x)))                (n x d)
//! z = e W^T + b                                    (n x c)
//! L = mean_n -log softmax(z)[y] + (l2 / 2) |W|^2
//! dW = dz^T e + l2 W,  db = sum_n dz,  de = dz W  -> back through the pooling and the layers
//! ```
//! Parameters of the layers below the trained ones (and the embeddings) keep a zero gradient:
//! AdamW leaves them unchanged (no weight decay on them either).

use std::ops::Range;

use smelt_kernels::pool::ThreadPool;
use smelt_models::backward::{cross_entropy, mean_pool_normalize, mean_pool_normalize_backward, BertTrain};
use smelt_models::classify::Head;
use smelt_train::{Objective, StepStats, TrainError};

use crate::CompressError;

fn bad(msg: String) -> CompressError {
    CompressError::Finetune(msg)
}

/// The encoder and its head as the training loop sees them.
pub struct EncoderClassifier<'a> {
    /// The encoder; its parameters end with `head.weight` (`c x d`) and `head.bias` (`c`).
    pub model: BertTrain,
    pub train: Vec<(Vec<u32>, u32)>,
    pub val: Vec<(Vec<u32>, u32)>,
    head_w: Range<usize>,
    head_b: Range<usize>,
    frozen: Vec<Range<usize>>,
    decay: Vec<Range<usize>>,
    l2: f32,
    classes: usize,
    pool: &'a ThreadPool,
}

impl<'a> EncoderClassifier<'a> {
    /// `model` with `head` appended, its last `train_layers` layers trained (0: the head alone).
    /// Sequences come framed (`[CLS] .. [SEP]`); labels index `head.labels`.
    pub fn new(mut model: BertTrain, head: &Head, train: Vec<(Vec<u32>, u32)>, val: Vec<(Vec<u32>, u32)>, train_layers: usize, pool: &'a ThreadPool) -> Result<Self, CompressError> {
        let (c, d) = (head.labels.len(), model.cfg.hidden_size);
        if head.dim != d || head.weights.len() != c || head.bias.len() != c {
            return Err(bad(format!("the head is for {}-dimensional embeddings and {c} labels; the encoder gives {d}", head.dim)));
        }
        let n_layers = model.cfg.num_hidden_layers;
        if train_layers > n_layers {
            return Err(bad(format!("--train-layers {train_layers}: the encoder has {n_layers} layers")));
        }
        if train.is_empty() {
            return Err(bad("no training examples".into()));
        }
        if let Some((_, y)) = train.iter().chain(&val).find(|(_, y)| *y as usize >= c) {
            return Err(bad(format!("label index {y} outside the head's {c} labels")));
        }
        // Nothing below the trained layers needs a gradient: the backward stops there.
        model.trained_from = n_layers - train_layers;
        let trained_layer = |name: &str| (n_layers - train_layers..n_layers).any(|i| name.contains(&format!("encoder.layer.{i}.")));
        let frozen: Vec<Range<usize>> = model.params.slots.iter().filter(|s| !trained_layer(&s.name)).map(|s| s.range.clone()).collect();
        let mut decay: Vec<Range<usize>> = model.matrices().into_iter().filter(|r| !frozen.contains(r)).collect();
        let w: Vec<f32> = head.weights.iter().flatten().copied().collect();
        let head_w = model.params.push("head.weight", &[c, d], &w)?;
        let head_b = model.params.push("head.bias", &[c], &head.bias)?;
        decay.push(head_w.clone());
        Ok(EncoderClassifier { model, train, val, head_w, head_b, frozen, decay, l2: head.l2, classes: c, pool })
    }

    /// Logits (`n x c`) of `batch`, and with `grad` the gradient of the batch's mean loss added.
    fn run(&self, batch: &[&(Vec<u32>, u32)], grads: Option<&mut [f32]>) -> Result<(f64, Vec<f32>, usize), CompressError> {
        let (c, d) = (self.classes, self.model.cfg.hidden_size);
        let seqs: Vec<&[u32]> = batch.iter().map(|(s, _)| s.as_slice()).collect();
        let acts = self.model.forward(self.pool, &seqs)?;
        let n = batch.len();
        let mut e = vec![0f32; n * d];
        let norms = mean_pool_normalize(&acts.out, &acts.starts, d, &mut e);
        let p = &self.model.params.data;
        let (w, b) = (&p[self.head_w.clone()], &p[self.head_b.clone()]);
        let mut z = vec![0f32; n * c];
        for (zr, er) in z.chunks_exact_mut(c).zip(e.chunks_exact(d)) {
            for (k, zk) in zr.iter_mut().enumerate() {
                *zk = b[k] + w[k * d..(k + 1) * d].iter().zip(er).map(|(a, b)| a * b).sum::<f32>();
            }
        }
        let y: Vec<u32> = batch.iter().map(|(_, y)| *y).collect();
        let mut dz = vec![0f32; n * c];
        let ce = cross_entropy(&z, &y, c, &mut dz).ok_or_else(|| bad("a label outside the head".into()))?;
        let loss = ce as f64 + 0.5 * self.l2 as f64 * w.iter().map(|v| (v * v) as f64).sum::<f64>();
        if let Some(g) = grads {
            let mut de = vec![0f32; n * d];
            for ((dzr, er), der) in dz.chunks_exact(c).zip(e.chunks_exact(d)).zip(de.chunks_exact_mut(d)) {
                for (k, &dzk) in dzr.iter().enumerate() {
                    g[self.head_b.start + k] += dzk;
                    let (gw, wk) = (&mut g[self.head_w.start + k * d..self.head_w.start + (k + 1) * d], &w[k * d..(k + 1) * d]);
                    gw.iter_mut().zip(er).for_each(|(g, e)| *g += dzk * e);
                    der.iter_mut().zip(wk).for_each(|(g, w)| *g += dzk * w);
                }
            }
            g[self.head_w.clone()].iter_mut().zip(w).for_each(|(g, w)| *g += self.l2 * w);
            let mut dout = vec![0f32; acts.out.len()];
            mean_pool_normalize_backward(&e, &norms, &acts.starts, &de, d, &mut dout);
            self.model.backward(self.pool, &acts, &dout, &[], g)?;
            for r in &self.frozen {
                g[r.clone()].iter_mut().for_each(|v| *v = 0.0);
            }
        }
        Ok((loss, z, acts.tokens()))
    }

    /// Predicted label of every example, in batches of 32.
    pub fn predict(&self, examples: &[(Vec<u32>, u32)]) -> Result<Vec<usize>, CompressError> {
        let mut out = Vec::with_capacity(examples.len());
        for chunk in examples.chunks(32) {
            let refs: Vec<&(Vec<u32>, u32)> = chunk.iter().collect();
            let (_, z, _) = self.run(&refs, None)?;
            out.extend(z.chunks_exact(self.classes).map(|r| r.iter().enumerate().fold(0, |best, (k, v)| if *v > r[best] { k } else { best })));
        }
        Ok(out)
    }

    /// Accuracy on `examples`.
    pub fn accuracy(&self, examples: &[(Vec<u32>, u32)]) -> Result<f64, CompressError> {
        let pred = self.predict(examples)?;
        Ok(pred.iter().zip(examples).filter(|(p, (_, y))| **p == *y as usize).count() as f64 / examples.len().max(1) as f64)
    }

    /// `(mean cross-entropy, accuracy)` on `examples` (the cross-entropy without the L2 term),
    /// in batches of 32.
    pub fn score(&self, examples: &[(Vec<u32>, u32)]) -> Result<(f64, f64), CompressError> {
        let c = self.classes;
        let (mut nll, mut right) = (0f64, 0usize);
        for chunk in examples.chunks(32) {
            let refs: Vec<&(Vec<u32>, u32)> = chunk.iter().collect();
            let (_, z, _) = self.run(&refs, None)?;
            for (row, (_, y)) in z.chunks_exact(c).zip(chunk) {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let lse = max as f64 + row.iter().map(|&v| ((v - max) as f64).exp()).sum::<f64>().ln();
                nll += lse - row[*y as usize] as f64;
                let best = row.iter().enumerate().fold(0, |b, (k, v)| if *v > row[b] { k } else { b });
                right += usize::from(best == *y as usize);
            }
        }
        let n = examples.len().max(1) as f64;
        Ok((nll / n, right as f64 / n))
    }

    /// Parameter slots of the trained layers and the head, in the encoder's order: what a
    /// federation exchanges.
    pub fn trained_slots(&self) -> Vec<smelt_models::backward::Slot> {
        self.model.params.slots.iter().filter(|s| !self.frozen.contains(&s.range)).cloned().collect()
    }

    /// The head as trained (the given one's metadata with the new weights).
    pub fn head(&self, like: &Head) -> Head {
        let p = &self.model.params.data;
        let d = self.model.cfg.hidden_size;
        Head { weights: p[self.head_w.clone()].chunks_exact(d).map(<[f32]>::to_vec).collect(), bias: p[self.head_b.clone()].to_vec(), ..like.clone() }
    }

    /// The encoder's parameters without the head (what a sentence-transformers directory holds).
    pub fn encoder(&self) -> BertTrain {
        let mut m = self.model.clone();
        m.params.slots.retain(|s| s.name != "head.weight" && s.name != "head.bias");
        m.params.data.truncate(self.head_w.start.min(self.head_b.start));
        m
    }
}

impl Objective for EncoderClassifier<'_> {
    fn examples(&self) -> usize {
        self.train.len()
    }
    fn params(&self) -> &[f32] {
        &self.model.params.data
    }
    fn params_mut(&mut self) -> &mut [f32] {
        &mut self.model.params.data
    }
    fn decay(&self) -> Vec<Range<usize>> {
        self.decay.clone()
    }
    fn grad(&mut self, batch: &[usize], grads: &mut [f32]) -> Result<StepStats, TrainError> {
        let refs: Vec<&(Vec<u32>, u32)> = batch.iter().map(|&i| &self.train[i]).collect();
        crate::distill::step_result(self.run(&refs, Some(grads)).map(|(loss, _, tokens)| StepStats { loss, tokens: tokens as u64 }))
    }
    /// One minus the validation accuracy.
    fn validate(&mut self) -> Result<f64, TrainError> {
        if self.val.is_empty() {
            return Ok(0.0);
        }
        self.accuracy(&self.val).map(|a| 1.0 - a).map_err(|e| TrainError::Objective(e.to_string()))
    }
}
