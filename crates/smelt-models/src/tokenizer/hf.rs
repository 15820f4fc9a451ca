//! Byte-level BPE tokenizers from HF `tokenizer.json` (with `tokenizer_config.json` beside it
//! for BOS/EOS and the chat template), read into the same [`Tokenizer`] as GGUF vocabularies.
//! Supported: `model.type = "BPE"` with a byte-level pre-tokenizer (GPT-2's, SmolLM's digit
//! splitting, or Llama 3's pattern); anything else is refused by name.

use std::path::Path;

use serde_json::Value;

use super::{PreTokenizer, TokenKind, Tokenizer};
use crate::ModelError;

fn bad(msg: impl Into<String>) -> ModelError {
    ModelError::Tokenizer(msg.into())
}

/// Which of smelt's pre-tokenizers an HF `pre_tokenizer` description is.
fn pre_tokenizer(v: &Value) -> Result<PreTokenizer, ModelError> {
    let ty = v.get("type").and_then(|t| t.as_str()).unwrap_or("");
    match ty {
        "ByteLevel" => Ok(PreTokenizer::Gpt2),
        "Sequence" => {
            let parts = v.get("pretokenizers").and_then(|p| p.as_array()).ok_or_else(|| bad("pre-tokenizer Sequence without parts"))?;
            let types: Vec<&str> = parts.iter().map(|p| p.get("type").and_then(|t| t.as_str()).unwrap_or("")).collect();
            let digits_individual = parts.iter().any(|p| p.get("type").and_then(|t| t.as_str()) == Some("Digits") && p.get("individual_digits").and_then(|b| b.as_bool()) == Some(true));
            match types.as_slice() {
                ["Digits", "ByteLevel"] if digits_individual => Ok(PreTokenizer::SmolLm),
                ["Split", "ByteLevel"] => {
                    let pattern = parts[0].get("pattern").and_then(|p| p.get("Regex")).and_then(|r| r.as_str()).unwrap_or("");
                    if pattern.contains(r"\p{N}{1,3}") {
                        Ok(PreTokenizer::Llama3)
                    } else {
                        Err(bad(format!("pre-tokenizer pattern {pattern:?} is not supported yet")))
                    }
                }
                other => Err(bad(format!("pre-tokenizer sequence {other:?} is not supported yet"))),
            }
        }
        other => Err(bad(format!("pre-tokenizer {other:?} is not supported yet (byte-level BPE is)"))),
    }
}

impl Tokenizer {
    /// Reads `tokenizer.json` (and `tokenizer_config.json` beside it, if present).
    pub fn from_hf_json(path: &Path) -> Result<Tokenizer, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let j: Value = serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let config = match path.parent() {
            Some(dir) => crate::read_side_file(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null),
            None => Value::Null,
        };
        Self::from_hf_value(&j, &config)
    }

    /// A byte-level BPE tokenizer from a parsed tokenizer.json and tokenizer_config.json (for
    /// the special tokens; `Null` when there is none).
    pub fn from_hf_value(j: &Value, config: &Value) -> Result<Tokenizer, ModelError> {
        let model = j.get("model").ok_or_else(|| bad("tokenizer.json has no \"model\""))?;
        if model.get("type").and_then(|t| t.as_str()) != Some("BPE") {
            return Err(bad(format!("tokenizer model {:?} is not supported yet (byte-level BPE is)", model.get("type"))));
        }
        let vocab = model.get("vocab").and_then(|v| v.as_object()).ok_or_else(|| bad("BPE model without a vocabulary"))?;
        let mut size = vocab.values().filter_map(|v| v.as_u64()).max().map_or(0, |m| m as usize + 1);
        let added = j.get("added_tokens").and_then(|a| a.as_array()).cloned().unwrap_or_default();
        for a in &added {
            if let Some(id) = a.get("id").and_then(|i| i.as_u64()) {
                size = size.max(id as usize + 1);
            }
        }
        // Ids are dense in real vocabularies; the tables below have a slot for every id.
        let limit = vocab.len() + added.len() + (1 << 16);
        if size > limit {
            return Err(bad(format!("a token id of {} for a vocabulary of {} tokens is implausible", size - 1, vocab.len())));
        }
        let mut tokens = vec![String::new(); size];
        let mut kinds = vec![TokenKind::Unused; size];
        for (t, id) in vocab {
            let id = id.as_u64().ok_or_else(|| bad(format!("token {t:?} has no numeric id")))? as usize;
            tokens[id] = t.clone();
            kinds[id] = TokenKind::Normal;
        }
        for a in &added {
            let (Some(id), Some(content)) = (a.get("id").and_then(|i| i.as_u64()), a.get("content").and_then(|c| c.as_str())) else { continue };
            let special = a.get("special").and_then(|s| s.as_bool()).unwrap_or(false);
            tokens[id as usize] = content.to_string();
            kinds[id as usize] = if special { TokenKind::Control } else { TokenKind::UserDefined };
        }
        let merges: Vec<String> = match model.get("merges").and_then(|m| m.as_array()) {
            Some(list) => list
                .iter()
                .map(|m| match m {
                    Value::String(s) => Ok(s.clone()),
                    Value::Array(pair) if pair.len() == 2 => Ok(format!("{} {}", pair[0].as_str().unwrap_or(""), pair[1].as_str().unwrap_or(""))),
                    other => Err(bad(format!("merge {other} is neither \"a b\" nor [a, b]"))),
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let pre = pre_tokenizer(j.get("pre_tokenizer").unwrap_or(&Value::Null))?;
        let token_of = |key: &str| -> Option<u32> {
            let v = config.get(key)?;
            let s = v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            tokens.iter().position(|t| t == s).map(|i| i as u32)
        };
        let (bos, eos) = (token_of("bos_token"), token_of("eos_token"));
        let add_bos = config.get("add_bos_token").and_then(|b| b.as_bool()).unwrap_or(false);
        Tokenizer::build(tokens, kinds, &merges, pre, bos, eos, add_bos)
    }
}

/// The chat template of an HF model directory (`tokenizer_config.json`), if it has one.
pub fn hf_chat_template(dir: &Path) -> Result<Option<String>, ModelError> {
    let path = dir.join("tokenizer_config.json");
    match crate::read_side_file(&path)?.as_ref().and_then(|v| v.get("chat_template")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) => Ok(Some(t.clone())),
        Some(_) => Err(ModelError::SideFile { path, reason: "chat_template is not a string (smelt reads one template)".into() }),
    }
}
