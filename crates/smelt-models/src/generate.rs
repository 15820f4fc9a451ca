//! Text generation: prompt processing with prefix reuse, sampling, stop conditions, streaming.
//!
//! The session keeps the tokens it holds; a new prompt reuses the longest common prefix (the
//! earlier turns of a chat) and only the rest is processed. Streamed text never ends inside a
//! UTF-8 character, and text that could be the start of a stop string is held back until it is
//! known not to be one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;
use smelt_kernels::pool::ThreadPool;

use crate::sampling::{Sampler, SamplerConfig};
use crate::{Llama, ModelError, Session, StreamDecoder, Tokenizer};

/// Prompt tokens processed per forward pass (bounds activation memory).
pub const PROMPT_BATCH: usize = 512;

#[derive(Clone, Debug)]
pub struct GenerateConfig {
    pub max_tokens: usize,
    /// Generation stops before any of these strings; the string is not returned.
    pub stop: Vec<String>,
    pub sampler: SamplerConfig,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig { max_tokens: 256, stop: Vec::new(), sampler: SamplerConfig::default() }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// `max_tokens` were generated.
    Length,
    /// A stop string appeared.
    Stop,
    /// The context is full.
    ContextFull,
    /// Cancelled (Ctrl-C).
    Cancelled,
}

/// What a generation produced and how long it took.
#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    /// Prompt tokens reused from the session instead of processed.
    pub cached_tokens: usize,
    pub stop_reason: StopReason,
    pub prompt_seconds: f64,
    pub generation_seconds: f64,
}

/// Length of the longest prefix of `text` that could still turn into a stop string.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut hold = 0;
    for s in stops {
        for k in (1..s.len()).rev() {
            if k <= text.len() && s.is_char_boundary(k) && text.is_char_boundary(text.len() - k) && text.ends_with(&s[..k]) {
                hold = hold.max(k);
                break;
            }
        }
    }
    hold
}

/// Generated tokens to final text: pieces never end inside a UTF-8 character, a stop string
/// ends the text (and is not part of it), and text that could be the start of a stop string is
/// held back until it is known not to be one. Shared by [`generate`] and the server's engine.
#[derive(Debug)]
pub struct TextStream {
    decoder: StreamDecoder,
    text: String,
    emitted: usize,
    stop: Vec<String>,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> TextStream {
        TextStream { decoder: StreamDecoder::new(true), text: String::new(), emitted: 0, stop }
    }

    /// Adds one generated token; returns the text that became final, and `true` when a stop
    /// string appeared (generation should end; nothing after it is ever returned).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> (&str, bool) {
        self.text.push_str(&self.decoder.push(tok, id));
        let emitted = self.emitted;
        // A stop string anywhere in what is not yet emitted (it may start in held-back text).
        let from = emitted.saturating_sub(self.stop.iter().map(|s| s.len()).max().unwrap_or(0));
        let from = (from..=emitted).find(|&i| self.text.is_char_boundary(i)).unwrap_or(emitted);
        if let Some(at) = self.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i)).min() {
            self.text.truncate(at.max(emitted));
            self.emitted = self.text.len();
            return (&self.text[emitted..], true);
        }
        let safe = self.text.len() - held_back(&self.text, &self.stop);
        if safe > emitted {
            self.emitted = safe;
            return (&self.text[emitted..safe], false);
        }
        ("", false)
    }

    /// The end of generation (not after a stop string): everything still held back.
    pub fn finish(&mut self) -> &str {
        self.text.push_str(&self.decoder.finish());
        let emitted = self.emitted;
        self.emitted = self.text.len();
        &self.text[emitted..]
    }

    /// All final text so far.
    pub fn text(&self) -> &str {
        &self.text[..self.emitted]
    }

    pub fn into_text(mut self) -> String {
        self.text.truncate(self.emitted);
        self.text
    }
}

/// Processes `prompt` (reusing what the session already holds) and returns the logits of its
/// last token.
pub fn prefill<'s>(model: &Llama, pool: &ThreadPool, sess: &'s mut Session, prompt: &[u32]) -> Result<(&'s [f32], usize), ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::Config("empty prompt: there is nothing to continue".into()));
    }
    if prompt.len() >= sess.max_len() {
        return Err(ModelError::PromptTooLong { tokens: prompt.len(), context: sess.max_len() });
    }
    let mut common = sess.tokens().iter().zip(prompt).take_while(|(a, b)| a == b).count();
    if common == prompt.len() {
        common -= 1; // the last token must run again to give its logits
    }
    sess.truncate(common);
    let mut start = common;
    while prompt.len() - start > PROMPT_BATCH {
        model.forward(pool, sess, &prompt[start..start + PROMPT_BATCH], false)?;
        start += PROMPT_BATCH;
    }
    let logits = model.forward(pool, sess, &prompt[start..], false)?;
    Ok((logits, common))
}

/// Generates after `prompt`, calling `on_text` with each piece of text as it becomes final.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    model: &Llama,
    tok: &Tokenizer,
    pool: &ThreadPool,
    sess: &mut Session,
    prompt: &[u32],
    cfg: &GenerateConfig,
    cancel: &AtomicBool,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, ModelError> {
    let t0 = Instant::now();
    let mut sampler = Sampler::new(cfg.sampler.clone());
    for &t in prompt {
        sampler.accept(t);
    }
    let (logits, cached) = prefill(model, pool, sess, prompt)?;
    let mut logits = logits.to_vec();
    let prompt_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut stream = TextStream::new(cfg.stop.clone());
    let mut tokens = Vec::new();
    let stop_reason = loop {
        if cancel.load(Ordering::Relaxed) {
            break StopReason::Cancelled;
        }
        if tokens.len() >= cfg.max_tokens {
            break StopReason::Length;
        }
        let next = sampler.sample(&logits);
        if tok.is_eog(next) {
            break StopReason::Eos;
        }
        tokens.push(next);
        sampler.accept(next);
        let (piece, stopped) = stream.push(tok, next);
        if !piece.is_empty() {
            on_text(piece);
        }
        if stopped {
            break StopReason::Stop;
        }
        if sess.len() + 1 >= sess.max_len() {
            break StopReason::ContextFull;
        }
        logits.copy_from_slice(model.forward(pool, sess, &[next], false)?);
    };
    if stop_reason != StopReason::Stop {
        let rest = stream.finish();
        if !rest.is_empty() {
            on_text(rest);
        }
    }
    let text = stream.into_text();
    Ok(Generation {
        text,
        tokens,
        prompt_tokens: prompt.len(),
        cached_tokens: cached,
        stop_reason,
        prompt_seconds,
        generation_seconds: t1.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::held_back;

    #[test]
    fn holds_back_possible_stop_string_starts() {
        let stops = vec!["\nUser:".to_string(), "END".to_string()];
        assert_eq!(held_back("hello\nUs", &stops), 3);
        assert_eq!(held_back("hello E", &stops), 1);
        assert_eq!(held_back("hello", &stops), 0);
        assert_eq!(held_back("é", &["éa".to_string()]), 2);
    }
}
