//! smelt's tokenizer against the HF `tokenizers` Python package built from the same GGUF
//! vocabulary (`tests/reference/hf_tokenize.py`), on a varied corpus: Austen and WikiText lines
//! from ../shared/data, numbers, code, emoji and other scripts, whitespace runs, special tokens.
//! Needs `python3` with `gguf` and `tokenizers` (scripts/test installs them).

use smelt_formats::GgufFile;
use smelt_models::{StreamDecoder, Tokenizer};

mod common;
use common::{corpus, run_reference};

fn model() -> (GgufFile, Tokenizer) {
    let f = GgufFile::open(smelt_assets::ensure("smollm2-135m").unwrap()).unwrap();
    let t = Tokenizer::from_gguf(&f.header).unwrap();
    (f, t)
}

#[test]
fn token_ids_equal_hf_tokenizers_on_a_varied_corpus() {
    let (f, tok) = model();
    let texts = corpus();
    let reference = run_reference("hf_tokenize.py", f.path().unwrap(), &texts);
    assert_eq!(reference.len(), texts.len());
    let mut mismatches = Vec::new();
    for (i, (text, want)) in texts.iter().zip(&reference).enumerate() {
        let got = tok.encode(text, true);
        if &got != want {
            mismatches.push((i, text.chars().take(60).collect::<String>(), got.len(), want.len()));
        }
    }
    assert!(texts.len() >= 5000, "corpus has only {} texts", texts.len());
    assert!(mismatches.is_empty(), "{} of {} texts differ from HF tokenizers, e.g. {:?}", mismatches.len(), texts.len(), &mismatches[..mismatches.len().min(5)]);
}

#[test]
fn decoding_round_trips_and_streams_without_splitting_characters() {
    let (_, tok) = model();
    // Texts whose bytes all have tokens round-trip exactly.
    for text in corpus().into_iter().filter(|t| !t.contains("bytes without tokens")) {
        let ids = tok.encode(&text, true);
        assert_eq!(tok.decode(&ids, false), text);
        let mut s = StreamDecoder::new(false);
        let mut streamed = String::new();
        for &id in &ids {
            // Every piece is valid UTF-8 by construction (a String); none ends mid-character.
            streamed.push_str(&s.push(&tok, id));
        }
        streamed.push_str(&s.finish());
        assert_eq!(streamed, text);
    }
}

#[test]
fn special_tokens_are_parsed_only_when_asked() {
    let (_, tok) = model();
    let im_start = tok.token_id("<|im_start|>").unwrap();
    assert_eq!(tok.encode("<|im_start|>", true), vec![im_start]);
    let as_text = tok.encode("<|im_start|>", false);
    assert!(as_text.len() > 1 && !as_text.contains(&im_start));
    assert_eq!(tok.decode(&as_text, true), "<|im_start|>");
    assert_eq!(tok.decode(&[im_start], true), "");
    assert_eq!((tok.bos, tok.eos, tok.add_bos), (Some(1), Some(2), false));
}
