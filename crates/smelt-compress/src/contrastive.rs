//! Contrastive fine-tuning of a sentence encoder on pairs (anchor, positive) with in-batch
//! negatives: sentence-transformers' MultipleNegativesRankingLoss (Henderson et al. 2017, "Efficient
//! Natural Language Response Suggestion for Smart Reply"; the loss of SimCSE and of the
//! all-MiniLM models' own training). Each anchor must pick its positive among the batch's
//! positives (and the hard negatives, when given).
//!
//! For a batch of `n` pairs, `m >= n` candidates (the positives, then any hard negatives), width
//! `d`, scale `s` (20, as sentence-transformers):
//! ```text
//! a = normalize(mean_pool(BERT(anchors)))          (n x d)
//! p = normalize(mean_pool(BERT(candidates)))       (m x d)
//! S = s a p^T                                      (n x m)
//! L = mean_i -log softmax(S_i)[i]
//! dS = (softmax(S) - onehot) / n,  da = s dS p,  dp = s dS^T a  -> back through pooling and BERT
//! ```
//! The validation figure is retrieval on the held-out pairs: one minus the fraction of anchors
//! whose nearest held-out positive (by cosine) is their own.

use std::ops::Range;

use smelt_kernels::pool::ThreadPool;
use smelt_models::backward::{cross_entropy, mean_pool_normalize, mean_pool_normalize_backward, BertTrain};
use smelt_train::{Objective, StepStats, TrainError};

use crate::CompressError;

/// One training pair: anchor, positive, and optionally a hard negative (framed token ids).
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub anchor: Vec<u32>,
    pub positive: Vec<u32>,
    pub negative: Option<Vec<u32>>,
}

/// The encoder under the in-batch-negatives loss: the [`Objective`].
pub struct Contrastive<'a> {
    pub model: BertTrain,
    pub train: Vec<Pair>,
    pub val: Vec<Pair>,
    /// The similarity scale `s`.
    pub scale: f32,
    decay: Vec<Range<usize>>,
    pool: &'a ThreadPool,
}

impl<'a> Contrastive<'a> {
    pub fn new(model: BertTrain, train: Vec<Pair>, val: Vec<Pair>, scale: f32, pool: &'a ThreadPool) -> Result<Self, CompressError> {
        if train.len() < 2 {
            return Err(CompressError::Finetune(format!("{} training pairs: in-batch negatives need at least 2", train.len())));
        }
        if !(scale.is_finite() && scale > 0.0) {
            return Err(CompressError::Finetune(format!("the similarity scale {scale} must be a positive number")));
        }
        let decay = model.matrices();
        Ok(Contrastive { model, train, val, scale, decay, pool })
    }

    /// Normalized mean-pooled embeddings of `seqs` (`len x d`), with what the backward needs.
    fn embed(&self, seqs: &[&[u32]]) -> Result<(smelt_models::backward::BertActs, Vec<f32>, Vec<f32>), CompressError> {
        let d = self.model.cfg.hidden_size;
        let acts = self.model.forward(self.pool, seqs)?;
        let mut e = vec![0f32; seqs.len() * d];
        let norms = mean_pool_normalize(&acts.out, &acts.starts, d, &mut e);
        Ok((acts, e, norms))
    }

    /// The loss of `batch` (indices into `pairs`) and, with `grads`, its gradient added.
    fn run(&self, pairs: &[&Pair], grads: Option<&mut [f32]>) -> Result<(f64, usize), CompressError> {
        let d = self.model.cfg.hidden_size;
        let n = pairs.len();
        // One packed forward: anchors, positives, hard negatives.
        let mut seqs: Vec<&[u32]> = pairs.iter().map(|p| p.anchor.as_slice()).collect();
        seqs.extend(pairs.iter().map(|p| p.positive.as_slice()));
        seqs.extend(pairs.iter().filter_map(|p| p.negative.as_deref()));
        let m = seqs.len() - n;
        let (acts, e, norms) = self.embed(&seqs)?;
        let (a, p) = e.split_at(n * d);
        let mut s = vec![0f32; n * m];
        for (i, row) in s.chunks_exact_mut(m).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = self.scale * a[i * d..(i + 1) * d].iter().zip(&p[j * d..(j + 1) * d]).map(|(x, y)| x * y).sum::<f32>();
            }
        }
        let targets: Vec<u32> = (0..n as u32).collect();
        let mut ds = vec![0f32; n * m];
        let loss = cross_entropy(&s, &targets, m, &mut ds).ok_or_else(|| CompressError::Finetune("empty batch".into()))?;
        if let Some(g) = grads {
            let mut de = vec![0f32; (n + m) * d];
            let (da, dp) = de.split_at_mut(n * d);
            for i in 0..n {
                for j in 0..m {
                    let w = self.scale * ds[i * m + j];
                    if w == 0.0 {
                        continue;
                    }
                    for k in 0..d {
                        da[i * d + k] += w * p[j * d + k];
                        dp[j * d + k] += w * a[i * d + k];
                    }
                }
            }
            let mut dout = vec![0f32; acts.out.len()];
            mean_pool_normalize_backward(&e, &norms, &acts.starts, &de, d, &mut dout);
            self.model.backward(self.pool, &acts, &dout, &[], g)?;
        }
        Ok((loss as f64, acts.tokens()))
    }

    /// Retrieval accuracy on `pairs`: the fraction of anchors whose most similar positive (among
    /// all of `pairs`' positives) is their own.
    pub fn accuracy(&self, pairs: &[Pair]) -> Result<f64, CompressError> {
        let d = self.model.cfg.hidden_size;
        let mut a = Vec::with_capacity(pairs.len() * d);
        let mut p = Vec::with_capacity(pairs.len() * d);
        for chunk in pairs.chunks(32) {
            let seqs: Vec<&[u32]> = chunk.iter().map(|x| x.anchor.as_slice()).chain(chunk.iter().map(|x| x.positive.as_slice())).collect();
            let (_, e, _) = self.embed(&seqs)?;
            a.extend_from_slice(&e[..chunk.len() * d]);
            p.extend_from_slice(&e[chunk.len() * d..]);
        }
        let hits = (0..pairs.len())
            .filter(|&i| {
                let ai = &a[i * d..(i + 1) * d];
                let sim = |j: usize| ai.iter().zip(&p[j * d..(j + 1) * d]).map(|(x, y)| x * y).sum::<f32>();
                let own = sim(i);
                (0..pairs.len()).all(|j| j == i || sim(j) < own)
            })
            .count();
        Ok(hits as f64 / pairs.len().max(1) as f64)
    }
}

impl Objective for Contrastive<'_> {
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
        let refs: Vec<&Pair> = batch.iter().map(|&i| &self.train[i]).collect();
        crate::distill::step_result(self.run(&refs, Some(grads)).map(|(loss, tokens)| StepStats { loss, tokens: tokens as u64 }))
    }
    /// One minus the retrieval accuracy on the held-out pairs.
    fn validate(&mut self) -> Result<f64, TrainError> {
        if self.val.is_empty() {
            return Ok(0.0);
        }
        self.accuracy(&self.val).map(|a| 1.0 - a).map_err(|e| TrainError::Objective(e.to_string()))
    }
}

/// The loss of `pairs` as one batch (for checks and reports).
pub fn batch_loss(obj: &Contrastive, pairs: &[Pair]) -> Result<f64, CompressError> {
    let refs: Vec<&Pair> = pairs.iter().collect();
    obj.run(&refs, None).map(|(l, _)| l)
}
