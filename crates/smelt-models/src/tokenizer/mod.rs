//! Tokenizers. [`Tokenizer`] is byte-level BPE (GPT-2 family: SmolLM2, Llama 3, Qwen, ...) read
//! from a GGUF vocabulary (`tokenizer.ggml.*`): special tokens matched in the text first, then
//! the pre-tokenizer's words, each written in the byte-level alphabet and merged by BPE.
//! Checked token for token against the HF `tokenizers` package (tests/tokenizer_vs_hf.rs).

pub mod bpe;
pub mod bytelevel;
pub mod hf;
pub mod pretok;
pub mod wordpiece;

use std::collections::HashMap;

use smelt_formats::gguf::{GgufArray, GgufHeader};

pub use pretok::PreTokenizer;

use crate::ModelError;

/// GGUF token types (`tokenizer.ggml.token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Normal,
    Unknown,
    /// Control tokens (`<|im_start|>`, `<|endoftext|>`): matched in text as one token, never
    /// produced by BPE, not printed when decoding with `skip_special`.
    Control,
    /// User-defined tokens: matched in text like control tokens, printed as text.
    UserDefined,
    Unused,
    Byte,
}

impl TokenKind {
    fn from_gguf(v: i64) -> TokenKind {
        match v {
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Normal,
        }
    }
}

/// A byte-level BPE tokenizer.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    tokens: Vec<String>,
    kinds: Vec<TokenKind>,
    vocab: HashMap<String, u32>,
    merges: bpe::Merges,
    pre: PreTokenizer,
    /// Tokens matched in text before BPE, longest first.
    specials: Vec<(String, u32)>,
    /// The token of each single byte; `None` where the vocabulary has none (SmolLM2 lacks
    /// some control bytes and bytes that never occur in UTF-8).
    byte_ids: [Option<u32>; 256],
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Add `bos` at the start of every encoded text.
    pub add_bos: bool,
    /// Tokens that end a generation (EOS and end-of-turn tokens).
    eog: Vec<u32>,
}

/// Control tokens that end a turn in the common chat formats.
const END_OF_TURN: [&str; 8] = ["<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>", "</s>"];

/// One piece of text between special tokens.
enum Piece<'a> {
    Text(&'a str),
    Special(u32),
}

fn strings(h: &GgufHeader, key: &str) -> Result<Vec<String>, ModelError> {
    match h.get(key) {
        Some(v) => match v.as_array() {
            Some(GgufArray::String(s)) => Ok(s.clone()),
            _ => Err(ModelError::Tokenizer(format!("{key} is not an array of strings"))),
        },
        None => Err(ModelError::Tokenizer(format!("the model has no {key}: it carries no tokenizer"))),
    }
}

impl Tokenizer {
    /// Reads the tokenizer of a GGUF file (`tokenizer.ggml.model = "gpt2"`).
    pub fn from_gguf(h: &GgufHeader) -> Result<Tokenizer, ModelError> {
        let model = h.get("tokenizer.ggml.model").and_then(|v| v.as_str()).unwrap_or("");
        if model != "gpt2" {
            return Err(ModelError::Tokenizer(format!(
                "tokenizer model {model:?} is not supported yet (smelt reads byte-level BPE, \"gpt2\")"
            )));
        }
        let pre_name = h.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
        let pre = PreTokenizer::from_gguf_name(pre_name)
            .ok_or_else(|| ModelError::Tokenizer(format!("pre-tokenizer {pre_name:?} is not supported yet (smollm, gpt2, llama3 are)")))?;
        let tokens = strings(h, "tokenizer.ggml.tokens")?;
        let merges = strings(h, "tokenizer.ggml.merges")?;
        let kinds: Vec<TokenKind> = match h.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
            Some(GgufArray::I32(t)) if t.len() == tokens.len() => t.iter().map(|&k| TokenKind::from_gguf(k as i64)).collect(),
            Some(_) => return Err(ModelError::Tokenizer("tokenizer.ggml.token_type does not match the token list".into())),
            None => vec![TokenKind::Normal; tokens.len()],
        };
        let n = tokens.len();
        let id = |key: &str| -> Result<Option<u32>, ModelError> {
            match h.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64().filter(|&v| v < n as u64) {
                    Some(id) => Ok(Some(id as u32)),
                    None => Err(ModelError::hyper(key, v.render(20), format!("not a token id: the vocabulary has {n} tokens"))),
                },
            }
        };
        let (bos, eos) = (id("tokenizer.ggml.bos_token_id")?, id("tokenizer.ggml.eos_token_id")?);
        let add_bos = h.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);
        Self::build(tokens, kinds, &merges, pre, bos, eos, add_bos)
    }

    /// Builds a tokenizer from its parts (`merges` as `"left right"` strings, in rank order).
    pub fn build(
        tokens: Vec<String>,
        kinds: Vec<TokenKind>,
        merges: &[String],
        pre: PreTokenizer,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
    ) -> Result<Tokenizer, ModelError> {
        if tokens.len() > u32::MAX as usize || kinds.len() != tokens.len() {
            return Err(ModelError::Tokenizer("token list and token types disagree".into()));
        }
        let vocab: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let bad = || ModelError::Tokenizer(format!("merge #{rank} {m:?} does not join two tokens of the vocabulary"));
            let (l, r) = m.split_once(' ').ok_or_else(bad)?;
            let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) else { return Err(bad()) };
            let joined = vocab.get(&format!("{l}{r}")).copied().ok_or_else(bad)?;
            table.entry((li, ri)).or_insert((rank as u32, joined));
        }
        let mut byte_ids = [None; 256];
        for (b, c) in bytelevel::byte_to_char().iter().enumerate() {
            byte_ids[b] = vocab.get(&c.to_string()).copied();
        }
        if byte_ids.iter().filter(|b| b.is_some()).count() < 128 {
            return Err(ModelError::Tokenizer("fewer than half of the 256 byte-level tokens are in the vocabulary: not a byte-level BPE vocabulary".into()));
        }
        let mut specials: Vec<(String, u32)> = kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| matches!(k, TokenKind::Control | TokenKind::UserDefined))
            .map(|(i, _)| (tokens[i].clone(), i as u32))
            .filter(|(t, _)| !t.is_empty())
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let mut eog: Vec<u32> = eos.into_iter().collect();
        eog.extend(specials.iter().filter(|(t, id)| kinds[*id as usize] == TokenKind::Control && END_OF_TURN.contains(&t.as_str())).map(|s| s.1));
        eog.sort_unstable();
        eog.dedup();
        Ok(Tokenizer { tokens, kinds, vocab, merges: bpe::Merges { table }, pre, specials, byte_ids, bos, eos, add_bos, eog })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of a token given in its stored form (e.g. `"<|im_end|>"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.get(text).copied()
    }

    /// The token's stored form (byte-level alphabet for normal tokens).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// Whether `id` ends a generation (EOS or an end-of-turn token).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Whether `id` is a control token (end of turn, end of text, ...).
    pub fn is_control(&self, id: u32) -> bool {
        self.kind(id) == Some(TokenKind::Control)
    }

    fn split_specials<'a>(&self, text: &'a str, parse_special: bool, out: &mut Vec<Piece<'a>>) {
        if !parse_special || self.specials.is_empty() {
            out.push(Piece::Text(text));
            return;
        }
        let mut start = 0;
        let mut i = 0;
        let bytes = text.as_bytes();
        while i < bytes.len() {
            let hit = self.specials.iter().find(|(s, _)| bytes[i..].starts_with(s.as_bytes()));
            match hit {
                Some((s, id)) => {
                    if start < i {
                        out.push(Piece::Text(&text[start..i]));
                    }
                    out.push(Piece::Special(*id));
                    i += s.len();
                    start = i;
                }
                None => i += 1,
            }
        }
        if start < text.len() {
            out.push(Piece::Text(&text[start..]));
        }
    }

    /// Token ids of `text`. With `parse_special`, control and user-defined tokens written in
    /// the text (`<|im_start|>`) become those tokens; otherwise they are tokenized as text.
    /// Adds BOS when the model asks for it.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if self.add_bos {
            out.extend(self.bos);
        }
        let mut pieces = Vec::new();
        self.split_specials(text, parse_special, &mut pieces);
        let mut words = Vec::new();
        let mut ids = Vec::new();
        for p in pieces {
            match p {
                Piece::Special(id) => out.push(id),
                Piece::Text(t) => {
                    words.clear();
                    self.pre.split(t, &mut words);
                    for w in &words {
                        ids.clear();
                        // A byte without a token is skipped, as HF `tokenizers` does without an
                        // unknown token (its neighbours may then merge).
                        ids.extend(w.bytes().filter_map(|b| self.byte_ids[b as usize]));
                        self.merges.apply(&mut ids);
                        out.extend_from_slice(&ids);
                    }
                }
            }
        }
        out
    }

    /// The bytes token `id` stands for (control tokens: their text, or nothing with `skip_special`).
    pub fn token_bytes(&self, id: u32, skip_special: bool) -> Vec<u8> {
        let Some(t) = self.tokens.get(id as usize) else { return Vec::new() };
        match self.kinds[id as usize] {
            TokenKind::Control if skip_special => Vec::new(),
            TokenKind::Control | TokenKind::UserDefined => t.as_bytes().to_vec(),
            _ => bytelevel::decode(t).unwrap_or_else(|| t.as_bytes().to_vec()),
        }
    }

    /// Text of `ids`; byte sequences that are not UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id, skip_special)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns a stream of token ids into text without ever splitting a UTF-8 character: bytes of an
/// incomplete character wait for the next token.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    pub skip_special: bool,
}

impl StreamDecoder {
    pub fn new(skip_special: bool) -> Self {
        StreamDecoder { pending: Vec::new(), skip_special }
    }

    /// The text that token `id` completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.extend(tok.token_bytes(id, self.skip_special));
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        Some(n) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + n);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
