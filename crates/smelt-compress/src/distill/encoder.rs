//! Distilling a sentence encoder (Reimers & Gurevych 2020, "Making Monolingual Sentence
//! Embeddings Multilingual using Knowledge Distillation"; sentence-transformers' model
//! distillation): the student learns the teacher's sentence vectors on unlabelled sentences.
//!
//! For a batch of sentences `s` with teacher vectors `t_s` and student vectors `e_s` (mean-pooled,
//! L2-normalized last hidden states), and hidden states `h^S_i`, `h^T_j` after student layer `i`
//! and teacher layer `j`:
//! ```text
//! L = w_cos mean_s (1 - cos(e_s, t_s)) + w_mse mean_{s,c} (e_sc - t_sc)^2
//!   + w_hidden sum_{(i, j) in map} mean_{tok,c} (h^S_i - h^T_j)^2
//! ```
//! The teacher's sentence vectors of the training and validation sentences are computed once,
//! before training (`n d` floats: 1.5 kB a sentence for d = 384); hidden-state targets, when
//! asked for, are computed batch by batch. The validation loss is `mean_s (1 - cos(e_s, t_s))`
//! over held-out sentences.

use std::ops::Range;

use smelt_kernels::pool::ThreadPool;
use smelt_models::backward::{cosine_loss, mean_pool_normalize, mean_pool_normalize_backward, mse, BertTrain};
use smelt_models::embed::{Encoder, Pooling};
use smelt_models::observe::{MatrixInput, Observer};
use smelt_train::{Objective, StepStats, TrainError};

use crate::CompressError;

/// The loss's weights and the hidden-state layer map.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderLoss {
    pub cos: f32,
    pub mse: f32,
    pub hidden: f32,
    /// `(student layer, teacher layer)` pairs for the hidden-state term.
    pub layer_map: Vec<(usize, usize)>,
}

impl Default for EncoderLoss {
    fn default() -> Self {
        EncoderLoss { cos: 1.0, mse: 0.0, hidden: 0.0, layer_map: Vec::new() }
    }
}

/// A student encoder learning a teacher's sentence vectors: the [`Objective`] of the loop.
pub struct EncoderDistill<'a> {
    teacher: &'a Encoder,
    pub student: BertTrain,
    train: Vec<Vec<u32>>,
    val: Vec<Vec<u32>>,
    /// Teacher vectors of `train` and `val`, `d` each.
    targets: Vec<f32>,
    val_targets: Vec<f32>,
    loss: EncoderLoss,
    pool: &'a ThreadPool,
    decay: Vec<Range<usize>>,
}

/// Captures the teacher's hidden state after the layers asked for (the input of layer `j + 1`'s
/// Q, K and V is the output of layer `j`).
struct Hidden<'a> {
    want: &'a [usize],
    got: Vec<(usize, Vec<f32>)>,
}

impl Observer for Hidden<'_> {
    fn observe(&mut self, layer: usize, input: MatrixInput, x: &[f32], rows: usize, cols: usize) {
        if input == MatrixInput::AttnQkv && layer > 0 && self.want.contains(&(layer - 1)) {
            self.got.push((layer - 1, x[..rows * cols].to_vec()));
        }
    }
}

fn bad(msg: String) -> CompressError {
    CompressError::Distill(msg)
}

impl<'a> EncoderDistill<'a> {
    /// Checks that teacher and student fit together (vocabulary, widths, pooling), tokenizes
    /// nothing (the sequences come framed and truncated), and computes the teacher's vectors.
    /// `progress(done, total)` during that pass.
    pub fn new(teacher: &'a Encoder, student: BertTrain, train: Vec<Vec<u32>>, val: Vec<Vec<u32>>, loss: EncoderLoss, pool: &'a ThreadPool, progress: &mut dyn FnMut(usize, usize)) -> Result<Self, CompressError> {
        let (tc, sc) = (&teacher.model.cfg, &student.cfg);
        if teacher.pooling != Pooling::Mean || !teacher.normalize {
            return Err(bad("the teacher must mean-pool and normalize its sentence vectors (as all-MiniLM-L6-v2 does): other poolings are not supported yet".into()));
        }
        if tc.vocab_size != sc.vocab_size {
            return Err(bad(format!("teacher and student have different vocabularies ({} and {} tokens): distillation needs the same tokenizer", tc.vocab_size, sc.vocab_size)));
        }
        if tc.hidden_size != sc.hidden_size {
            return Err(bad(format!("teacher and student have different hidden sizes ({} and {}) and smelt has no projection between them yet: choose a student of width {}", tc.hidden_size, sc.hidden_size, tc.hidden_size)));
        }
        if loss.hidden > 0.0 {
            if loss.layer_map.is_empty() {
                return Err(bad("a hidden-state loss needs a layer map (student:teacher pairs)".into()));
            }
            if let Some((s, t)) = loss.layer_map.iter().find(|(s, t)| *s >= sc.num_hidden_layers || *t >= tc.num_hidden_layers) {
                return Err(bad(format!("layer map {s}:{t}: the student has {} layers and the teacher {}", sc.num_hidden_layers, tc.num_hidden_layers)));
            }
        }
        for (w, name) in [(loss.cos, "cosine"), (loss.mse, "MSE"), (loss.hidden, "hidden-state")] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(bad(format!("the {name} loss weight {w} must be a finite number >= 0")));
            }
        }
        if loss.cos + loss.mse + loss.hidden <= 0.0 {
            return Err(bad("every loss weight is 0: nothing to learn".into()));
        }
        if train.is_empty() {
            return Err(bad("no training sentences".into()));
        }
        let max = sc.max_position_embeddings.min(tc.max_position_embeddings);
        if let Some(s) = train.iter().chain(&val).find(|s| s.len() > max || s.len() < 2) {
            return Err(bad(format!("a sequence of {} tokens: sequences must be framed ([CLS] .. [SEP]) and at most {max} tokens", s.len())));
        }
        let total = train.len() + val.len();
        let mut done = 0;
        let mut vectors = |seqs: &[Vec<u32>]| -> Result<Vec<f32>, CompressError> {
            let d = tc.hidden_size;
            let mut out = Vec::with_capacity(seqs.len() * d);
            let mut bufs = Default::default();
            for chunk in seqs.chunks(64) {
                let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
                let h = teacher.model.forward(pool, &refs, &mut bufs)?;
                let starts = starts(&refs);
                let mut e = vec![0f32; chunk.len() * d];
                mean_pool_normalize(&h, &starts, d, &mut e);
                out.extend_from_slice(&e);
                done += chunk.len();
                progress(done, total);
            }
            Ok(out)
        };
        let targets = vectors(&train)?;
        let val_targets = vectors(&val)?;
        let decay = student.matrices();
        Ok(EncoderDistill { teacher, student, train, val, targets, val_targets, loss, pool, decay })
    }

    /// Bytes of the teacher's cached vectors.
    pub fn cache_bytes(&self) -> u64 {
        4 * (self.targets.len() + self.val_targets.len()) as u64
    }

    /// Training and validation sentences.
    pub fn sizes(&self) -> (usize, usize) {
        (self.train.len(), self.val.len())
    }

    /// Mean `1 - cos` between student and teacher vectors of `seqs` (with `targets`).
    fn cos_gap(&self, seqs: &[Vec<u32>], targets: &[f32]) -> Result<f64, CompressError> {
        let d = self.student.cfg.hidden_size;
        let mut sum = 0f64;
        for (chunk, t) in seqs.chunks(64).zip(targets.chunks(64 * d)) {
            let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
            let acts = self.student.forward(self.pool, &refs)?;
            let mut e = vec![0f32; chunk.len() * d];
            mean_pool_normalize(&acts.out, &acts.starts, d, &mut e);
            let mut de = vec![0f32; e.len()];
            sum += cosine_loss(&e, t, d, &mut de) as f64 * chunk.len() as f64;
        }
        Ok(sum / seqs.len().max(1) as f64)
    }

    /// Validation `1 - cos` of the student as it stands.
    pub fn val_gap(&self) -> Result<f64, CompressError> {
        self.cos_gap(&self.val, &self.val_targets)
    }

    fn batch_grad(&mut self, batch: &[usize], grads: &mut [f32]) -> Result<StepStats, CompressError> {
        let d = self.student.cfg.hidden_size;
        let refs: Vec<&[u32]> = batch.iter().map(|&i| self.train[i].as_slice()).collect();
        let target: Vec<f32> = batch.iter().flat_map(|&i| self.targets[i * d..(i + 1) * d].iter().copied()).collect();
        let acts = self.student.forward(self.pool, &refs)?;
        let mut e = vec![0f32; batch.len() * d];
        let norms = mean_pool_normalize(&acts.out, &acts.starts, d, &mut e);
        let (mut de, mut tmp) = (vec![0f32; e.len()], vec![0f32; e.len()]);
        let mut loss = 0f64;
        if self.loss.cos > 0.0 {
            loss += (self.loss.cos * cosine_loss(&e, &target, d, &mut tmp)) as f64;
            de.iter_mut().zip(&tmp).for_each(|(a, b)| *a += self.loss.cos * b);
        }
        if self.loss.mse > 0.0 {
            loss += (self.loss.mse * mse(&e, &target, &mut tmp)) as f64;
            de.iter_mut().zip(&tmp).for_each(|(a, b)| *a += self.loss.mse * b);
        }
        let mut d_out = vec![0f32; acts.out.len()];
        mean_pool_normalize_backward(&e, &norms, &acts.starts, &de, d, &mut d_out);
        let mut d_hidden: Vec<(usize, Vec<f32>)> = Vec::new();
        if self.loss.hidden > 0.0 {
            let teacher_layers: Vec<usize> = self.loss.layer_map.iter().map(|m| m.1).collect();
            let mut cap = Hidden { want: &teacher_layers, got: Vec::new() };
            let last = self.teacher.model.forward_observed(self.pool, &refs, &mut Default::default(), Some(&mut cap))?;
            cap.got.push((self.teacher.model.cfg.num_hidden_layers - 1, last));
            for &(s, t) in &self.loss.layer_map {
                let Some((_, h)) = cap.got.iter().find(|(l, _)| *l == t) else { continue };
                let mut g = vec![0f32; h.len()];
                loss += (self.loss.hidden * mse(acts.hidden(s), h, &mut g)) as f64;
                g.iter_mut().for_each(|v| *v *= self.loss.hidden);
                match d_hidden.iter_mut().find(|(l, _)| *l == s) {
                    Some((_, acc)) => acc.iter_mut().zip(&g).for_each(|(a, b)| *a += b),
                    None => d_hidden.push((s, g)),
                }
            }
        }
        // The last layer's hidden-state gradient joins d_out (backward adds d_hidden after a
        // layer; "after the last layer" is the output itself).
        let last = self.student.cfg.num_hidden_layers - 1;
        if let Some(pos) = d_hidden.iter().position(|(l, _)| *l == last) {
            let (_, g) = d_hidden.swap_remove(pos);
            d_out.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
        }
        let dh: Vec<(usize, &[f32])> = d_hidden.iter().map(|(l, g)| (*l, g.as_slice())).collect();
        self.student.backward(self.pool, &acts, &d_out, &dh, grads)?;
        Ok(StepStats { loss, tokens: acts.tokens() as u64 })
    }
}

/// Offsets of each sequence in the packed rows.
fn starts(seqs: &[&[u32]]) -> Vec<usize> {
    let mut s = vec![0];
    for q in seqs {
        s.push(s[s.len() - 1] + q.len());
    }
    s
}

impl Objective for EncoderDistill<'_> {
    fn examples(&self) -> usize {
        self.train.len()
    }
    fn params(&self) -> &[f32] {
        &self.student.params.data
    }
    fn params_mut(&mut self) -> &mut [f32] {
        &mut self.student.params.data
    }
    fn decay(&self) -> Vec<Range<usize>> {
        self.decay.clone()
    }
    fn grad(&mut self, batch: &[usize], grads: &mut [f32]) -> Result<StepStats, TrainError> {
        super::step_result(self.batch_grad(batch, grads))
    }
    fn validate(&mut self) -> Result<f64, TrainError> {
        if self.val.is_empty() {
            return Ok(0.0);
        }
        self.val_gap().map_err(|e| TrainError::Objective(e.to_string()))
    }
}
