//! Distilling a decoder (Hinton et al. 2015; the student usually the teacher with layers removed,
//! as in Sreenivas et al. 2024, "LLM Pruning and Distillation in Practice: The Minitron
//! Approach"): on chunks of text, the student's next-token distributions learn the teacher's.
//!
//! For the `t` tokens of a batch with teacher logits `z^T` and student logits `z`:
//! ```text
//! L = w_kl T^2 mean_t KL(softmax(z^T_t / T) || softmax(z_t / T))
//!   + w_ce mean_{t with a next token} -log softmax(z_t)[next token]
//! ```
//! The teacher's logits are computed batch by batch with the inference model (its own weight
//! format; `t x vocab` floats a batch, not cached). The validation loss is the mean KL divergence
//! at `T = 1` over held-out chunks.

use std::ops::Range;

use smelt_kernels::pool::ThreadPool;
use smelt_models::attention::KvType;
use smelt_models::backward::{cross_entropy, distill_kl, LlamaTrain};
use smelt_models::Llama;
use smelt_train::{Objective, StepStats, TrainError};

use crate::CompressError;

/// The loss's weights and temperature.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecoderLoss {
    pub kl: f32,
    pub temperature: f32,
    pub ce: f32,
}

impl Default for DecoderLoss {
    fn default() -> Self {
        DecoderLoss { kl: 1.0, temperature: 1.0, ce: 0.0 }
    }
}

/// A student decoder learning a teacher's next-token distributions: the [`Objective`].
pub struct DecoderDistill<'a> {
    teacher: &'a Llama,
    pub student: LlamaTrain,
    train: Vec<Vec<u32>>,
    val: Vec<Vec<u32>>,
    loss: DecoderLoss,
    pool: &'a ThreadPool,
    decay: Vec<Range<usize>>,
}

fn bad(msg: String) -> CompressError {
    CompressError::Distill(msg)
}

impl<'a> DecoderDistill<'a> {
    /// Checks that teacher and student fit together (vocabulary, width) and the settings.
    pub fn new(teacher: &'a Llama, student: LlamaTrain, train: Vec<Vec<u32>>, val: Vec<Vec<u32>>, loss: DecoderLoss, pool: &'a ThreadPool) -> Result<Self, CompressError> {
        let (tc, sc) = (&teacher.cfg, &student.cfg);
        if tc.vocab != sc.vocab {
            return Err(bad(format!("teacher and student have different vocabularies ({} and {} tokens): distillation needs the same tokenizer", tc.vocab, sc.vocab)));
        }
        for (w, name) in [(loss.kl, "KL"), (loss.ce, "cross-entropy")] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(bad(format!("the {name} loss weight {w} must be a finite number >= 0")));
            }
        }
        if loss.kl + loss.ce <= 0.0 {
            return Err(bad("every loss weight is 0: nothing to learn".into()));
        }
        if !(loss.temperature.is_finite() && loss.temperature > 0.0) {
            return Err(bad(format!("the temperature {} must be a positive number", loss.temperature)));
        }
        if train.is_empty() {
            return Err(bad("no training chunks: give more text or a smaller --ctx".into()));
        }
        let max = tc.ctx_train.min(sc.ctx_train);
        if let Some(s) = train.iter().chain(&val).find(|s| s.len() > max || s.len() < 2) {
            return Err(bad(format!("a chunk of {} tokens: chunks must hold 2 to {max} tokens", s.len())));
        }
        let decay = student.matrices();
        Ok(DecoderDistill { teacher, student, train, val, loss, pool, decay })
    }

    /// Training and validation chunks.
    pub fn sizes(&self) -> (usize, usize) {
        (self.train.len(), self.val.len())
    }

    /// The teacher's logits of every token of `seqs`, packed (`t x vocab`).
    fn teacher_logits(&self, seqs: &[&[u32]]) -> Result<Vec<f32>, CompressError> {
        let mut out = Vec::new();
        for s in seqs {
            let mut sess = self.teacher.session_with(s.len(), KvType::F32);
            out.extend_from_slice(self.teacher.forward(self.pool, &mut sess, s, true)?);
        }
        Ok(out)
    }

    /// Mean KL divergence (T = 1) from the teacher's next-token distributions to the
    /// student's over the held-out chunks.
    pub fn val_kl(&self) -> Result<f64, CompressError> {
        let v = self.student.cfg.vocab;
        let (mut sum, mut n) = (0f64, 0usize);
        for s in &self.val {
            let acts = self.student.forward(self.pool, &[s])?;
            let zt = self.teacher_logits(&[s])?;
            let mut dz = vec![0f32; acts.logits.len()];
            sum += distill_kl(&acts.logits, &zt, v, 1.0, &mut dz) as f64 * s.len() as f64;
            n += s.len();
        }
        Ok(sum / n.max(1) as f64)
    }

    fn batch_grad(&mut self, batch: &[usize], grads: &mut [f32]) -> Result<StepStats, CompressError> {
        let v = self.student.cfg.vocab;
        let refs: Vec<&[u32]> = batch.iter().map(|&i| self.train[i].as_slice()).collect();
        let acts = self.student.forward(self.pool, &refs)?;
        let mut dz = vec![0f32; acts.logits.len()];
        let mut loss = 0f64;
        if self.loss.kl > 0.0 {
            let zt = self.teacher_logits(&refs)?;
            loss += (self.loss.kl * distill_kl(&acts.logits, &zt, v, self.loss.temperature, &mut dz)) as f64;
            dz.iter_mut().for_each(|g| *g *= self.loss.kl);
        }
        if self.loss.ce > 0.0 {
            // Rows with a next token: all but each sequence's last.
            let rows: Vec<usize> = acts.starts.windows(2).flat_map(|w| w[0]..w[1] - 1).collect();
            let ids: Vec<u32> = refs.iter().flat_map(|s| s[1..].iter().copied()).collect();
            let z: Vec<f32> = rows.iter().flat_map(|r| acts.logits[r * v..(r + 1) * v].iter().copied()).collect();
            let mut g = vec![0f32; z.len()];
            let ce = cross_entropy(&z, &ids, v, &mut g).ok_or_else(|| bad("a target token outside the vocabulary".into()))?;
            loss += (self.loss.ce * ce) as f64;
            for (r, gr) in rows.iter().zip(g.chunks_exact(v)) {
                dz[r * v..(r + 1) * v].iter_mut().zip(gr).for_each(|(a, b)| *a += self.loss.ce * b);
            }
        }
        self.student.backward(self.pool, &acts, &dz, &[], grads)?;
        Ok(StepStats { loss, tokens: acts.tokens() as u64 })
    }
}

impl Objective for DecoderDistill<'_> {
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
        self.val_kl().map_err(|e| TrainError::Objective(e.to_string()))
    }
}

/// Cuts `tokens` into chunks of `ctx` (the last partial chunk dropped) and holds out every 50th
/// (at most `max_val`) for validation: `(train, val)`.
pub fn chunks(tokens: &[u32], ctx: usize, max_val: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, c) in tokens.chunks_exact(ctx.max(2)).enumerate() {
        if i % 50 == 49 && val.len() < max_val {
            val.push(c.to_vec());
        } else {
            train.push(c.to_vec());
        }
    }
    (train, val)
}
