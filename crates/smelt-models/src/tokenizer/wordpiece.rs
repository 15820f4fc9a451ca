//! BERT's WordPiece tokenizer from an HF `tokenizer.json`: the BERT normalizer (text cleaning,
//! spaces around CJK ideographs, accent stripping by NFD, lowercasing), the BERT pre-tokenizer
//! (split on whitespace, every punctuation character a word of its own), greedy
//! longest-match-first WordPiece with `##` continuations, then `[CLS] ... [SEP]`. Character
//! classes use the same Unicode tables as HF `tokenizers` (the `unicode_categories` crate), so
//! that results agree token for token. Truncation and padding are the caller's choice: the
//! shipped files' fixed padding is ignored.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;
use unicode_categories::UnicodeCategories;
use unicode_normalization::UnicodeNormalization;

use crate::ModelError;

fn bad(msg: impl Into<String>) -> ModelError {
    ModelError::Tokenizer(msg.into())
}

/// The BERT normalizer's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BertNormalizer {
    pub clean_text: bool,
    pub handle_chinese_chars: bool,
    pub strip_accents: bool,
    pub lowercase: bool,
}

fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F | 0x2B740..=0x2B81F | 0x2B920..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

impl BertNormalizer {
    pub fn apply(&self, text: &str) -> String {
        let mut s: String = if self.clean_text {
            text.chars().filter(|&c| !(c == '\0' || c == '\u{FFFD}' || is_control(c))).map(|c| if is_whitespace(c) { ' ' } else { c }).collect()
        } else {
            text.to_string()
        };
        if self.handle_chinese_chars && s.chars().any(is_cjk) {
            let mut t = String::with_capacity(s.len() + 16);
            for c in s.chars() {
                if is_cjk(c) {
                    t.push(' ');
                    t.push(c);
                    t.push(' ');
                } else {
                    t.push(c);
                }
            }
            s = t;
        }
        if self.strip_accents {
            s = s.nfd().filter(|c| !c.is_mark_nonspacing()).collect();
        }
        if self.lowercase {
            // Character by character (no final-sigma rule), as HF does.
            s = s.chars().flat_map(char::to_lowercase).collect();
        }
        s
    }
}

/// A token of tokenizer.json's `added_tokens` (e.g. `[CLS]`, `[MASK]`): found in the text
/// before WordPiece runs, in the raw text when `normalized` is false, else in the normalized
/// text. `lstrip`/`rstrip` swallow the whitespace beside a match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddedToken {
    pub content: String,
    pub id: u32,
    pub normalized: bool,
    pub lstrip: bool,
    pub rstrip: bool,
}

/// A piece of text between added tokens.
enum Piece<'a> {
    Text(&'a str),
    Token(u32),
}

/// Splits `text` at the leftmost-longest occurrences of `tokens` (each token's next occurrence
/// is cached, so the whole split is O(len x tokens)).
fn split_added<'a>(text: &'a str, tokens: &[&AddedToken], out: &mut Vec<Piece<'a>>) {
    let mut next: Vec<Option<usize>> = tokens.iter().map(|t| if t.content.is_empty() { None } else { text.find(t.content.as_str()) }).collect();
    let mut cursor = 0;
    let mut text_start = 0;
    loop {
        for (k, t) in tokens.iter().enumerate() {
            if next[k].is_some_and(|p| p < cursor) {
                next[k] = text[cursor..].find(t.content.as_str()).map(|p| p + cursor);
            }
        }
        let best = (0..tokens.len()).filter(|&k| next[k].is_some()).min_by_key(|&k| (next[k], std::cmp::Reverse(tokens[k].content.len())));
        let Some(k) = best else { break };
        let (t, at) = (tokens[k], next[k].unwrap_or(0));
        let mut before = &text[text_start..at];
        if t.lstrip {
            before = before.trim_end();
        }
        if !before.is_empty() {
            out.push(Piece::Text(before));
        }
        out.push(Piece::Token(t.id));
        cursor = at + t.content.len();
        if t.rstrip {
            cursor += text[cursor..].len() - text[cursor..].trim_start().len();
        }
        text_start = cursor;
    }
    if text_start < text.len() {
        out.push(Piece::Text(&text[text_start..]));
    }
}

/// A WordPiece tokenizer.
#[derive(Clone, Debug)]
pub struct WordPiece {
    vocab: HashMap<String, u32>,
    tokens: Vec<String>,
    pub normalizer: BertNormalizer,
    prefix: String,
    max_word_chars: usize,
    pub unk: u32,
    pub cls: u32,
    pub sep: u32,
    pub pad: u32,
    /// `truncation.max_length` of the tokenizer.json, when it sets one (a hint: callers apply
    /// their own limit; padding settings are ignored).
    pub truncation: Option<usize>,
    pub added: Vec<AddedToken>,
}

impl WordPiece {
    /// Reads an HF `tokenizer.json` whose model is WordPiece.
    pub fn from_hf_json(path: &Path) -> Result<WordPiece, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let j: Value = serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        Self::from_json(&j)
    }

    pub fn from_json(j: &Value) -> Result<WordPiece, ModelError> {
        let model = j.get("model").ok_or_else(|| bad("tokenizer.json has no \"model\""))?;
        if model.get("type").and_then(|t| t.as_str()) != Some("WordPiece") {
            return Err(bad(format!("tokenizer model {:?} is not WordPiece", model.get("type"))));
        }
        let vocab_json = model.get("vocab").and_then(|v| v.as_object()).ok_or_else(|| bad("WordPiece model without a vocabulary"))?;
        let mut vocab = HashMap::with_capacity(vocab_json.len());
        let mut max_id = 0usize;
        // Ids are dense in real vocabularies; a few holes are allowed, a huge id is not (the
        // table below has a slot for every id up to the largest).
        let id_limit = vocab_json.len() as u64 + (1 << 16);
        for (t, id) in vocab_json {
            let id = id.as_u64().filter(|&i| i < id_limit).ok_or_else(|| bad(format!("token {t:?} has id {id}, expected a whole number below {id_limit} (the vocabulary has {} tokens)", vocab_json.len())))? as usize;
            max_id = max_id.max(id);
            vocab.insert(t.clone(), id as u32);
        }
        let mut tokens = vec![String::new(); max_id + 1];
        for (t, &id) in &vocab {
            tokens[id as usize] = t.clone();
        }
        let n = j.get("normalizer").unwrap_or(&Value::Null);
        let flag = |k: &str, default: bool| n.get(k).and_then(|v| v.as_bool()).unwrap_or(default);
        let lowercase = flag("lowercase", true);
        let normalizer = BertNormalizer {
            clean_text: flag("clean_text", true),
            handle_chinese_chars: flag("handle_chinese_chars", true),
            // HF: strip_accents unset means "as lowercase".
            strip_accents: n.get("strip_accents").and_then(|v| v.as_bool()).unwrap_or(lowercase),
            lowercase,
        };
        let id = |t: &str| vocab.get(t).copied().ok_or_else(|| bad(format!("the vocabulary lacks {t}")));
        Ok(WordPiece {
            unk: id(model.get("unk_token").and_then(|v| v.as_str()).unwrap_or("[UNK]"))?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            pad: id("[PAD]").unwrap_or(0),
            prefix: model.get("continuing_subword_prefix").and_then(|v| v.as_str()).unwrap_or("##").to_string(),
            max_word_chars: model.get("max_input_chars_per_word").and_then(|v| v.as_u64()).unwrap_or(100) as usize,
            added: j
                .get("added_tokens")
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|t| {
                            let flag = |k: &str| t.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
                            let id = t.get("id")?.as_u64().filter(|&i| i < 1 << 24)? as u32;
                            Some(AddedToken { content: t.get("content")?.as_str()?.to_string(), id, normalized: flag("normalized"), lstrip: flag("lstrip"), rstrip: flag("rstrip") })
                        })
                        .collect()
                })
                .unwrap_or_default(),
            truncation: j.get("truncation").and_then(|t| t.get("max_length")).and_then(|m| m.as_u64()).map(|m| m as usize),
            normalizer,
            vocab,
            tokens,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The largest id this tokenizer can produce (vocabulary and added tokens).
    pub fn max_id(&self) -> u64 {
        let added = self.added.iter().map(|a| a.id as u64).max().unwrap_or(0);
        (self.tokens.len() as u64).saturating_sub(1).max(added)
    }

    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Appends the pieces of one word: greedy longest match from the left, `##` continuations;
    /// a word with no full decomposition (or longer than the limit) is one `[UNK]`.
    fn word(&self, w: &str, out: &mut Vec<u32>) {
        if w.chars().count() > self.max_word_chars {
            out.push(self.unk);
            return;
        }
        let start_len = out.len();
        let mut start = 0;
        let mut piece = String::new();
        while start < w.len() {
            let mut end = w.len();
            let mut found = None;
            while end > start {
                piece.clear();
                if start > 0 {
                    piece.push_str(&self.prefix);
                }
                piece.push_str(&w[start..end]);
                if let Some(&id) = self.vocab.get(&piece) {
                    found = Some(id);
                    break;
                }
                end = w[..end].char_indices().next_back().map_or(start, |(i, _)| i);
            }
            match found {
                Some(id) => {
                    out.push(id);
                    start = end;
                }
                None => {
                    out.truncate(start_len);
                    out.push(self.unk);
                    return;
                }
            }
        }
    }

    /// The vocabulary's tokens in id order (continuation pieces keep their `##` prefix).
    pub fn vocab_words(&self) -> impl Iterator<Item = &str> {
        self.tokens.iter().map(String::as_str)
    }

    /// Token ids of `text` without `[CLS]`/`[SEP]`.
    pub fn encode_words(&self, text: &str) -> Vec<u32> {
        let raw: Vec<&AddedToken> = self.added.iter().filter(|t| !t.normalized).collect();
        let normed: Vec<&AddedToken> = self.added.iter().filter(|t| t.normalized).collect();
        let mut out = Vec::with_capacity(text.len() / 4 + 1);
        let mut pieces = Vec::new();
        split_added(text, &raw, &mut pieces);
        for p in pieces {
            match p {
                Piece::Token(id) => out.push(id),
                Piece::Text(t) => {
                    let norm = self.normalizer.apply(t);
                    let mut inner = Vec::new();
                    split_added(&norm, &normed, &mut inner);
                    for q in &inner {
                        match q {
                            Piece::Token(id) => out.push(*id),
                            Piece::Text(u) => self.words(u, &mut out),
                        }
                    }
                }
            }
        }
        out
    }

    /// The BERT pre-tokenizer and WordPiece on normalized text.
    fn words(&self, norm: &str, out: &mut Vec<u32>) {
        for chunk in norm.split(char::is_whitespace).filter(|c| !c.is_empty()) {
            let mut start = 0;
            for (i, c) in chunk.char_indices() {
                if is_punctuation(c) {
                    if start < i {
                        self.word(&chunk[start..i], out);
                    }
                    self.word(&chunk[i..i + c.len_utf8()], out);
                    start = i + c.len_utf8();
                }
            }
            if start < chunk.len() {
                self.word(&chunk[start..], out);
            }
        }
    }

    /// `[CLS] words [SEP]`, the words truncated so that the whole fits `max_len` tokens.
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        let words = self.encode_words(text);
        let keep = words.len().min(max_len.saturating_sub(2));
        let mut ids = Vec::with_capacity(keep + 2);
        ids.push(self.cls);
        ids.extend_from_slice(&words[..keep]);
        ids.push(self.sep);
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> WordPiece {
        let vocab: Vec<&str> = vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "hello", ",", "!", "world", "cafe"];
        let j = serde_json::json!({
            "normalizer": {"type": "BertNormalizer", "lowercase": true},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": vocab.iter().enumerate().map(|(i, t)| (t.to_string(), i)).collect::<HashMap<_, _>>()},
        });
        WordPiece::from_json(&j).unwrap()
    }

    #[test]
    fn greedy_longest_match_with_continuations() {
        let t = toy();
        assert_eq!(t.encode("Unaffable, hello!", 512), vec![2, 4, 5, 6, 8, 7, 9, 3]);
        assert_eq!(t.encode_words("unknowable"), vec![1]);
        assert_eq!(t.encode_words("Café  WORLD"), vec![11, 10]);
        assert_eq!(t.encode("hello hello hello", 4), vec![2, 7, 7, 3]);
        assert_eq!(t.encode("", 512), vec![2, 3]);
    }

    #[test]
    fn normalizer_cleans_spaces_cjk_and_accents() {
        let n = BertNormalizer { clean_text: true, handle_chinese_chars: true, strip_accents: true, lowercase: true };
        assert_eq!(n.apply("Ça\tva\u{0}? 中文"), "ca va?  中  文 ");
    }

    #[test]
    fn added_tokens_split_leftmost_longest_and_strip() {
        let tok = |c: &str, id, lstrip, rstrip| AddedToken { content: c.into(), id, normalized: false, lstrip, rstrip };
        let (a, b, m) = (tok("[A]", 1, false, false), tok("[A][B]", 2, false, false), tok("[M]", 3, true, true));
        let mut out = Vec::new();
        split_added("x [A][B] y[A] z  [M]  w[M]", &[&a, &b, &m], &mut out);
        let shown: Vec<String> = out.iter().map(|p| match p { Piece::Text(t) => format!("{t:?}"), Piece::Token(i) => format!("#{i}") }).collect();
        assert_eq!(shown, ["\"x \"", "#2", "\" y\"", "#1", "\" z\"", "#3", "\"w\"", "#3"]);
        out.clear();
        split_added("", &[&a], &mut out);
        assert!(out.is_empty());
    }
}
