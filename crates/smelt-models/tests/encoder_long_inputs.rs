//! Long inputs: a whole Austen chapter (Persuasion, chapter 1, about 3,400 tokens) is far past
//! all-MiniLM-L6-v2's 256-token limit. Truncation sees only the opening; sliding windows see it
//! all. Checked by what the embeddings must mean, against paragraph embeddings computed
//! separately: the windowed chapter is closer to the chapter's later paragraphs than the
//! truncated one is, and it equals the token-weighted mean of its windows.

use std::path::PathBuf;

use smelt_kernels::pool::ThreadPool;
use smelt_models::stats::cosine;
use smelt_models::{EmbedOptions, Encoder, Window};

fn chapter() -> (String, Vec<String>) {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/austen/persuasion.txt"));
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.trim() == "Chapter 1").unwrap() + 1;
    let end = lines.iter().position(|l| l.trim() == "Chapter 2").unwrap();
    let mut paragraphs = Vec::new();
    let mut cur = String::new();
    for l in &lines[start..end] {
        if l.trim().is_empty() {
            if !cur.is_empty() {
                paragraphs.push(std::mem::take(&mut cur));
            }
        } else {
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(l.trim());
        }
    }
    if !cur.is_empty() {
        paragraphs.push(cur);
    }
    (paragraphs.join(" "), paragraphs)
}

#[test]
fn windows_cover_a_whole_chapter_that_truncation_cuts_off() {
    let enc = Encoder::load(&smelt_assets::ensure("all-minilm-l6-v2").unwrap(), None).unwrap();
    let pool = ThreadPool::new(2);
    let (text, paragraphs) = chapter();
    let tokens = enc.tok.encode_words(&text).len();
    assert!(tokens > 10 * enc.max_len, "the chapter should be long: {tokens} tokens");

    let window = Window { size: 256, stride: 192 };
    let truncated = &enc.embed(&pool, &[text.as_str()], &EmbedOptions::default()).unwrap()[0];
    let windowed = &enc.embed(&pool, &[text.as_str()], &EmbedOptions { window: Some(window), ..Default::default() }).unwrap()[0];
    // The truncated embedding is the embedding of the opening alone.
    let refs: Vec<&str> = paragraphs.iter().map(String::as_str).collect();
    let para = enc.embed(&pool, &refs, &EmbedOptions::default()).unwrap();
    let words: Vec<usize> = paragraphs.iter().map(|p| enc.tok.encode_words(p).len()).collect();
    // Paragraphs wholly past the first 254 tokens: truncation never saw them.
    let mut seen = 0;
    let late: Vec<usize> = (0..paragraphs.len())
        .filter(|&i| {
            seen += words[i];
            seen - words[i] > enc.max_len
        })
        .collect();
    assert!(late.len() > 10);
    let mean_cos = |e: &[f32]| late.iter().map(|&i| cosine(e, &para[i])).sum::<f64>() / late.len() as f64;
    let (w, t) = (mean_cos(windowed), mean_cos(truncated));
    eprintln!("{tokens} tokens, {} late paragraphs: mean cosine to them, windowed {w:.4}, truncated {t:.4}", late.len());
    assert!(w > t + 0.02, "windows should represent the later text better: {w} vs {t}");
    assert!(cosine(windowed, truncated) < 0.99);

    // The windowed embedding is the token-weighted mean of its windows' pooled vectors,
    // normalized: rebuild it from the windows as separate sequences of token ids.
    let ids = enc.tok.encode_words(&text);
    let (body, stride) = (window.size - 2, window.stride);
    let mut sum = vec![0f64; enc.dim()];
    let mut start = 0;
    let mut bufs = smelt_models::bert::BertBuffers::default();
    loop {
        let end = (start + body).min(ids.len());
        let seq: Vec<u32> = std::iter::once(enc.tok.cls).chain(ids[start..end].iter().copied()).chain(std::iter::once(enc.tok.sep)).collect();
        let states = enc.model.forward(&pool, &[&seq], &mut bufs).unwrap();
        for row in states.chunks_exact(enc.dim()) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += v as f64; // mean pooling times the window's length = the sum of its rows
            }
        }
        if end == ids.len() {
            break;
        }
        start += stride;
    }
    let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
    let rebuilt: Vec<f32> = sum.iter().map(|v| (v / norm) as f32).collect();
    let c = cosine(&rebuilt, windowed);
    assert!(c > 0.999_999, "windowed embedding vs its rebuilt weighted mean: cosine {c}");
}
