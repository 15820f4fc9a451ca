//! Domain fine-tuning of a decoder with low-rank adapters (LoRA) over its frozen weights, which
//! stay in their own (quantized) types in memory: QLoRA on a CPU.
//!
//! The loss is the cross-entropy of the next token, averaged over the **trained positions** of a
//! micro-batch: every position of plain text; for chat data only the assistant's answers (their
//! text and the end-of-turn token after it), not the system or user turns nor the template's
//! `<|im_start|>assistant\n` header, as TRL's `assistant_only_loss` and Axolotl's
//! `train_on_inputs: false` do.
//!
//! Chat examples are rendered with the model's own template. A conversation of `n` messages is
//! cut into spans by rendering its prefixes: message `k` contributes
//! `render(m[..=k]) - render(m[..k])`, and an assistant message's span is split where
//! `render(m[..k], add_generation_prompt)` ends; each span is tokenized on its own (templates
//! put special tokens at span edges, so token boundaries do not move).

use std::ops::Range;

use smelt_kernels::pool::ThreadPool;
use smelt_models::backward::{cross_entropy, LlamaTrain};
use smelt_models::{ChatTemplate, Message, Tokenizer};
use smelt_train::{Objective, StepStats, TrainError};

use crate::CompressError;

/// One training sequence: its tokens and, per token after the first, whether predicting it is
/// trained (`trained[i]` is about `ids[i + 1]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub trained: Vec<bool>,
}

impl Example {
    /// Plain text: every next token trained.
    pub fn text(ids: Vec<u32>) -> Example {
        let n = ids.len().saturating_sub(1);
        Example { ids, trained: vec![true; n] }
    }

    pub fn trained_tokens(&self) -> usize {
        self.trained.iter().filter(|&&t| t).count()
    }
}

fn bad(msg: String) -> CompressError {
    CompressError::Finetune(msg)
}

/// Cuts tokens into examples of `ctx` (the last partial chunk dropped) and holds out every 50th
/// (at most `max_val`) for validation: `(train, val)`.
pub fn text_examples(tokens: &[u32], ctx: usize, max_val: usize) -> (Vec<Example>, Vec<Example>) {
    let (train, val) = crate::distill::decoder::chunks(tokens, ctx, max_val);
    (train.into_iter().map(Example::text).collect(), val.into_iter().map(Example::text).collect())
}

/// A conversation rendered with `template` and tokenized, the assistant's answers trained;
/// cut to `ctx` tokens. Errors name what is wrong with the conversation.
pub fn chat_example(messages: &[Message], template: &ChatTemplate, tok: &Tokenizer, ctx: usize) -> Result<Example, CompressError> {
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err(bad("the conversation has no assistant message: nothing to learn from it (chat data needs {\"role\": \"assistant\"} turns)".into()));
    }
    let render = |k: usize, gen: bool| template.render(&messages[..k], gen).map_err(CompressError::from);
    let mut ids: Vec<u32> = Vec::new();
    let mut trained: Vec<bool> = Vec::new();
    let mut push = |text: &str, train: bool, ids: &mut Vec<u32>| {
        let t = tok.encode(text, true);
        trained.extend(std::iter::repeat_n(train, t.len()));
        ids.extend(t);
    };
    let mut done = render(0, false)?;
    push(&done, false, &mut ids);
    for (k, message) in messages.iter().enumerate() {
        let next = render(k + 1, false)?;
        let not_append_only = || bad(format!("the chat template does not render conversations append-only (message {k} changes the text before it), so the answers cannot be located; give plain text instead"));
        if !next.starts_with(&done) {
            return Err(not_append_only());
        }
        if message.role == "assistant" {
            let header = render(k, true)?;
            if !header.starts_with(&done) || !next.starts_with(&header) {
                return Err(not_append_only());
            }
            push(&header[done.len()..], false, &mut ids);
            push(&next[header.len()..], true, &mut ids);
        } else {
            push(&next[done.len()..], false, &mut ids);
        }
        done = next;
    }
    // `trained` is per token; the loss at position i predicts token i + 1.
    ids.truncate(ctx);
    trained.truncate(ctx);
    let trained: Vec<bool> = trained.into_iter().skip(1).collect();
    Ok(Example { ids, trained })
}

/// Parses one line of chat JSON lines: `{"messages": [{"role": ..., "content": ...}, ...]}`.
pub fn parse_chat_line(line: &str) -> Result<Vec<Message>, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let msgs = v.get("messages").and_then(|m| m.as_array()).ok_or("expected an object with a \"messages\" array")?;
    msgs.iter()
        .map(|m| {
            let role = m.get("role").and_then(|r| r.as_str()).ok_or("a message without a \"role\" string")?;
            let content = m.get("content").and_then(|r| r.as_str()).ok_or("a message without a \"content\" string")?;
            if !matches!(role, "system" | "user" | "assistant") {
                return Err(format!("role {role:?}: expected system, user or assistant"));
            }
            Ok(Message::new(role, content))
        })
        .collect()
}

/// Fine-tuning as the training loop sees it: adapters trained by the masked next-token loss.
pub struct Finetune<'a> {
    pub model: LlamaTrain,
    pub train: Vec<Example>,
    pub val: Vec<Example>,
    pool: &'a ThreadPool,
    decay: Vec<Range<usize>>,
}

impl<'a> Finetune<'a> {
    /// Refuses examples with nothing trained and vocabularies that do not fit.
    pub fn new(model: LlamaTrain, train: Vec<Example>, val: Vec<Example>, pool: &'a ThreadPool) -> Result<Self, CompressError> {
        if model.params.is_empty() {
            return Err(bad("nothing to train: no adapter was placed".into()));
        }
        let train: Vec<Example> = train.into_iter().filter(|e| e.trained_tokens() > 0).collect();
        if train.is_empty() {
            return Err(bad("the data gives no training examples (text gives one per --ctx tokens, chat one per conversation with an answer): give more data or a smaller --ctx".into()));
        }
        let decay = model.matrices();
        Ok(Finetune { model, train, val, pool, decay })
    }

    /// `(sum of -log p over trained positions, their count, tokens run, positions whose most
    /// likely token is the target)` of `batch`, and its gradient added to `grads` (scaled to the
    /// mean) when given.
    fn nll(&self, batch: &[&Example], grads: Option<&mut [f32]>) -> Result<(f64, usize, usize, usize), CompressError> {
        let v = self.model.cfg.vocab;
        let refs: Vec<&[u32]> = batch.iter().map(|e| e.ids.as_slice()).collect();
        let acts = self.model.forward(self.pool, &refs)?;
        let (mut rows, mut ids) = (Vec::new(), Vec::new());
        for (e, w) in batch.iter().zip(acts.starts.windows(2)) {
            for (i, &t) in e.trained.iter().enumerate().take(w[1] - w[0] - 1) {
                if t {
                    rows.push(w[0] + i);
                    ids.push(e.ids[i + 1]);
                }
            }
        }
        if rows.is_empty() {
            return Ok((0.0, 0, acts.tokens(), 0));
        }
        let z: Vec<f32> = rows.iter().flat_map(|r| acts.logits[r * v..(r + 1) * v].iter().copied()).collect();
        let mut g = vec![0f32; z.len()];
        let ce = cross_entropy(&z, &ids, v, &mut g).ok_or_else(|| bad("a target token outside the vocabulary".into()))?;
        let right = z.chunks_exact(v).zip(&ids).filter(|(row, &id)| row.iter().enumerate().fold(0, |b, (k, x)| if *x > row[b] { k } else { b }) == id as usize).count();
        if let Some(grads) = grads {
            let mut dz = vec![0f32; acts.logits.len()];
            for (r, gr) in rows.iter().zip(g.chunks_exact(v)) {
                dz[r * v..(r + 1) * v].copy_from_slice(gr);
            }
            self.model.backward(self.pool, &acts, &dz, &[], grads)?;
        }
        Ok((ce as f64 * rows.len() as f64, rows.len(), acts.tokens(), right))
    }

    /// Mean next-token loss (nats) over the trained positions of the validation examples;
    /// `exp` of it is their perplexity.
    pub fn val_loss(&self) -> Result<f64, CompressError> {
        Ok(self.val_score()?.0)
    }

    /// Mean next-token loss (nats) and top-1 accuracy (the most likely token is the next one)
    /// over the trained positions of the validation examples; NaN for both when there are none.
    pub fn val_score(&self) -> Result<(f64, f64), CompressError> {
        let (mut sum, mut n, mut right) = (0f64, 0usize, 0usize);
        for e in &self.val {
            let (s, k, _, r) = self.nll(&[e], None)?;
            sum += s;
            n += k;
            right += r;
        }
        Ok(if n == 0 { (f64::NAN, f64::NAN) } else { (sum / n as f64, right as f64 / n as f64) })
    }
}

impl Objective for Finetune<'_> {
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
        let exs: Vec<&Example> = batch.iter().map(|&i| &self.train[i]).collect();
        crate::distill::step_result(self.nll(&exs, Some(grads)).map(|(sum, n, tokens, _)| StepStats { loss: sum / n.max(1) as f64, tokens: tokens as u64 }))
    }
    fn validate(&mut self) -> Result<f64, TrainError> {
        if self.val.is_empty() {
            return Ok(0.0);
        }
        self.val_loss().map_err(|e| TrainError::Objective(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_lines_parse_and_refuse() {
        let m = parse_chat_line(r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#).unwrap();
        assert_eq!(m, vec![Message::new("user", "hi"), Message::new("assistant", "hello")]);
        assert!(parse_chat_line("{").unwrap_err().contains("not JSON"));
        assert!(parse_chat_line(r#"{"text": "x"}"#).unwrap_err().contains("messages"));
        assert!(parse_chat_line(r#"{"messages": [{"role": "tool", "content": "x"}]}"#).unwrap_err().contains("tool"));
        assert!(parse_chat_line(r#"{"messages": [{"role": "user"}]}"#).unwrap_err().contains("content"));
    }

    #[test]
    fn text_examples_train_every_next_token() {
        let toks: Vec<u32> = (0..1000).collect();
        let (train, val) = text_examples(&toks, 10, 3);
        assert_eq!(train.len() + val.len(), 100);
        assert_eq!(val.len(), 2);
        assert!(train.iter().all(|e| e.ids.len() == 10 && e.trained_tokens() == 9));
    }
}
