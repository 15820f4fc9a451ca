//! Vocabulary trimming: keep only the tokens a corpus uses, so that a model for one language or
//! domain drops most of its embedding table and output head.
//!
//! For a byte-level BPE vocabulary (`tokenizer.ggml.model = gpt2`) the kept set is
//! - every token the tokenizer produces on the corpus;
//! - every token that is not a plain one (control, user-defined, unknown, unused, byte tokens)
//!   and every single-character token (the byte-level alphabet: any text still tokenizes);
//! - the closure under the merges: for every merge `a b -> ab` with `ab` kept, `a` and `b` are
//!   kept, so that BPE can still build `ab`.
//!
//! Merges are kept when their two parts and their result are. The corpus tokenizes exactly as
//! before (every merge BPE applied on it is kept, and the dropped ones never won a step there:
//! BPE applies the lowest-ranked applicable merge, and a dropped merge's result would otherwise
//! be kept), only renumbered. The embedding's and the head's rows of the kept tokens are copied
//! byte for byte (a row is whole blocks of any type), so the logits of every kept token are the
//! untrimmed model's; the removed tokens only leave the softmax.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use smelt_formats::gguf::{GgufArray, GgufValue, TensorSpec};
use smelt_formats::GgufFile;
use smelt_models::Tokenizer;

use crate::CompressError;

/// The vocabulary a corpus keeps.
#[derive(Clone, Debug)]
pub struct VocabChoice {
    /// Old ids of the kept tokens, ascending (new id = position).
    pub kept: Vec<u32>,
    pub vocab_before: usize,
    /// Distinct tokens the corpus uses, tokens it holds, and the tokens the merge closure added.
    pub used: usize,
    pub corpus_tokens: u64,
    pub closure: usize,
}

fn bad(msg: impl Into<String>) -> CompressError {
    CompressError::Fit(msg.into())
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<&'a [String], CompressError> {
    file.header.metadata.get(key).and_then(|v| v.as_array()).and_then(|a| a.as_strings()).ok_or_else(|| bad(format!("the file has no {key} (a string array): vocabulary trimming needs the GGUF's own tokenizer")))
}

/// The special token ids the metadata names (`tokenizer.ggml.*_token_id`).
fn special_ids(file: &GgufFile) -> Vec<(String, u64)> {
    file.header.metadata.iter().filter(|(k, _)| k.starts_with("tokenizer.ggml.") && k.ends_with("_token_id")).filter_map(|(k, v)| v.as_u64().map(|id| (k.to_string(), id))).collect()
}

/// Chooses the tokens to keep for `texts`, tokenized by `tok` (the file's own tokenizer).
pub fn choose_vocab(file: &GgufFile, tok: &Tokenizer, texts: &[&str]) -> Result<VocabChoice, CompressError> {
    let model = file.header.metadata.get("tokenizer.ggml.model").and_then(|v| v.as_str()).unwrap_or("");
    if model != "gpt2" {
        return Err(bad(format!("vocabulary trimming supports byte-level BPE tokenizers (tokenizer.ggml.model = gpt2); this file's is {model:?}")));
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types: Option<&[i32]> = match file.header.metadata.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
        Some(GgufArray::I32(t)) if t.len() == tokens.len() => Some(t),
        _ => None,
    };
    let n = tokens.len();
    let mut keep = vec![false; n];
    let mut corpus_tokens = 0u64;
    for t in texts {
        for id in tok.encode(t, false) {
            keep[id as usize] = true;
            corpus_tokens += 1;
        }
    }
    let used = keep.iter().filter(|k| **k).count();
    for (i, t) in tokens.iter().enumerate() {
        let plain = types.is_none_or(|ty| ty[i] == 1);
        if !plain || t.chars().count() == 1 {
            keep[i] = true;
        }
    }
    for (_, id) in special_ids(file) {
        match keep.get_mut(id as usize) {
            Some(k) => *k = true,
            None => return Err(bad(format!("a special token id ({id}) is past the vocabulary ({n})"))),
        }
    }
    let id_of: HashMap<&str, u32> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i as u32)).collect();
    let parts: Vec<(u32, u32, u32)> = merges
        .iter()
        .filter_map(|m| {
            let (a, b) = m.split_once(' ')?;
            Some((*id_of.get(a)?, *id_of.get(b)?, *id_of.get(format!("{a}{b}").as_str())?))
        })
        .collect();
    let before_closure = keep.iter().filter(|k| **k).count();
    loop {
        let mut changed = false;
        for &(a, b, ab) in parts.iter().rev() {
            if keep[ab as usize] && !(keep[a as usize] && keep[b as usize]) {
                keep[a as usize] = true;
                keep[b as usize] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let kept: Vec<u32> = (0..n as u32).filter(|&i| keep[i as usize]).collect();
    Ok(VocabChoice { closure: kept.len() - before_closure, kept, vocab_before: n, used, corpus_tokens })
}

/// Writes `file` with only the `kept` tokens (old ids, ascending): tokenizer arrays, merges and
/// special ids renumbered, the embedding's and a separate head's rows copied; atomically.
/// Returns the bytes written.
pub fn write_trimmed(file: &GgufFile, kept: &[u32], out: &Path) -> Result<u64, CompressError> {
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let n = tokens.len();
    if kept.is_empty() || kept.windows(2).any(|w| w[0] >= w[1]) || kept.last().is_some_and(|&k| k as usize >= n) {
        return Err(bad("the kept tokens must be ascending ids of the vocabulary"));
    }
    let new_id: HashMap<u32, u32> = kept.iter().enumerate().map(|(i, &k)| (k, i as u32)).collect();
    let is_kept: BTreeSet<&str> = kept.iter().map(|&k| tokens[k as usize].as_str()).collect();
    let mut meta = file.header.metadata.clone();
    let pick = |v: &GgufArray| -> Option<GgufArray> {
        macro_rules! sub {
            ($x:expr, $var:ident) => {
                ($x.len() == n).then(|| GgufArray::$var(kept.iter().map(|&k| $x[k as usize].clone()).collect()))
            };
        }
        match v {
            GgufArray::String(x) => sub!(x, String),
            GgufArray::I32(x) => sub!(x, I32),
            GgufArray::F32(x) => sub!(x, F32),
            _ => None,
        }
    };
    for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"] {
        if let Some(GgufValue::Array(a)) = file.header.metadata.get(key) {
            let sub = pick(a).ok_or_else(|| bad(format!("{key} does not hold one value per token")))?;
            meta.set(key, GgufValue::Array(sub));
        }
    }
    if let Ok(merges) = strings(file, "tokenizer.ggml.merges") {
        let kept_merges: Vec<String> = merges.iter().filter(|m| m.split_once(' ').is_some_and(|(a, b)| is_kept.contains(a) && is_kept.contains(b) && is_kept.contains(format!("{a}{b}").as_str()))).cloned().collect();
        meta.set("tokenizer.ggml.merges", GgufValue::Array(GgufArray::String(kept_merges)));
    }
    for (key, id) in special_ids(file) {
        let new = new_id.get(&(id as u32)).ok_or_else(|| bad(format!("{key} ({id}) is not among the kept tokens")))?;
        meta.set(key, GgufValue::U32(*new));
    }
    let arch = file.header.architecture().unwrap_or("llama").to_string();
    if meta.get(&format!("{arch}.vocab_size")).is_some() {
        meta.set(format!("{arch}.vocab_size"), GgufValue::U32(kept.len() as u32));
    }
    // The vocabulary-sized tensors: their rows of the kept tokens.
    let mut tensors: Vec<(TensorSpec, std::borrow::Cow<[u8]>)> = Vec::new();
    for t in file.tensors() {
        let bytes = file.tensor_data(t);
        if (t.name == "token_embd.weight" || t.name == "output.weight") && t.dims.len() == 2 && t.dims[1] as usize == n {
            let row = bytes.len() / n;
            let rows: Vec<u8> = kept.iter().flat_map(|&k| bytes[k as usize * row..(k as usize + 1) * row].iter().copied()).collect();
            tensors.push((TensorSpec { name: t.name.clone(), dims: vec![t.dims[0], kept.len() as u64], ty: t.ty }, rows.into()));
        } else {
            tensors.push((TensorSpec { name: t.name.clone(), dims: t.dims.clone(), ty: t.ty }, bytes.into()));
        }
    }
    super::write_gguf(file, &meta, tensors, out)
}
