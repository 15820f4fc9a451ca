//! Pre-tokenizers: how text is cut into words before BPE, named as in GGUF's
//! `tokenizer.ggml.pre`. The patterns are those of the HF `tokenizers` pre-tokenizers the models
//! were trained with.

use std::sync::OnceLock;

use fancy_regex::Regex;

/// GPT-2's pattern (HF `ByteLevel(use_regex=True)`): contractions, optionally space-prefixed
/// letter runs, number runs and punctuation runs, whitespace not followed by a word, then any
/// whitespace.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3's pattern: case-insensitive contractions, letters with one leading non-letter,
/// numbers in groups of up to three digits, punctuation with trailing newlines.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2 / `default` / `gpt2`.
    Gpt2,
    /// SmolLM (`smollm`): every digit is a word of its own (HF `Digits(individual_digits=True)`),
    /// then GPT-2's pattern.
    SmolLm,
    /// Llama 3 (`llama3`, `llama-bpe`).
    Llama3,
}

impl PreTokenizer {
    /// The pre-tokenizer a GGUF names, if smelt has it.
    pub fn from_gguf_name(name: &str) -> Option<PreTokenizer> {
        match name {
            "default" | "gpt2" | "gpt-2" => Some(PreTokenizer::Gpt2),
            "smollm" => Some(PreTokenizer::SmolLm),
            "llama3" | "llama-v3" | "llama-bpe" => Some(PreTokenizer::Llama3),
            _ => None,
        }
    }

    fn regex(self) -> &'static Regex {
        static GPT2_RE: OnceLock<Regex> = OnceLock::new();
        static LLAMA3_RE: OnceLock<Regex> = OnceLock::new();
        // The patterns are constants checked by the tests below.
        let compile = |p: &str| Regex::new(p).unwrap_or_else(|e| panic!("pre-tokenizer pattern: {e}"));
        match self {
            PreTokenizer::Gpt2 | PreTokenizer::SmolLm => GPT2_RE.get_or_init(|| compile(GPT2)),
            PreTokenizer::Llama3 => LLAMA3_RE.get_or_init(|| compile(LLAMA3)),
        }
    }

    /// Appends the words of `text` to `out`.
    pub fn split<'a>(self, text: &'a str, out: &mut Vec<&'a str>) {
        match self {
            PreTokenizer::SmolLm => {
                // Isolate every numeric character, then apply GPT-2's pattern to the rest.
                let mut start = 0;
                for (i, c) in text.char_indices() {
                    if c.is_numeric() {
                        self.split_regex(&text[start..i], out);
                        out.push(&text[i..i + c.len_utf8()]);
                        start = i + c.len_utf8();
                    }
                }
                self.split_regex(&text[start..], out);
            }
            _ => self.split_regex(text, out),
        }
    }

    fn split_regex<'a>(self, text: &'a str, out: &mut Vec<&'a str>) {
        if text.is_empty() {
            return;
        }
        let mut last = 0;
        for m in self.regex().find_iter(text) {
            match m {
                Ok(m) => {
                    if m.start() > last {
                        out.push(&text[last..m.start()]);
                    }
                    out.push(m.as_str());
                    last = m.end();
                }
                // Backtracking limit: keep the rest as one word rather than lose it.
                Err(_) => break,
            }
        }
        if last < text.len() {
            out.push(&text[last..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(p: PreTokenizer, s: &str) -> Vec<String> {
        let mut v = Vec::new();
        p.split(s, &mut v);
        v.into_iter().map(String::from).collect()
    }

    #[test]
    fn gpt2_pattern() {
        assert_eq!(words(PreTokenizer::Gpt2, "Hello world, it's 2024!  \n ok"), ["Hello", " world", ",", " it", "'s", " 2024", "!", "  \n", " ok"]);
    }

    #[test]
    fn smollm_isolates_digits() {
        assert_eq!(words(PreTokenizer::SmolLm, "in 2024, x42"), ["in", " ", "2", "0", "2", "4", ",", " x", "4", "2"]);
    }

    #[test]
    fn llama3_groups_digits_by_three() {
        assert_eq!(words(PreTokenizer::Llama3, "12345 ab"), ["123", "45", " ab"]);
    }
}
