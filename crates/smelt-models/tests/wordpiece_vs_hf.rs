//! smelt's WordPiece tokenizer (BERT normalizer, BERT pre-tokenizer, WordPiece, `[CLS] .. [SEP]`)
//! against the HF `tokenizers` package reading the same tokenizer.json
//! (`tests/reference/hf_wordpiece.py`), on the shared varied corpus plus STS-B sentences,
//! accented capitals, CJK, and words longer than the 100-character limit.
//! Needs `python3` with `tokenizers` (scripts/test installs it).

use smelt_models::tokenizer::wordpiece::WordPiece;

mod common;
use common::{corpus, run_reference, shared_data};

#[test]
fn wordpiece_ids_equal_hf_tokenizers() {
    let dir = smelt_assets::ensure("all-minilm-l6-v2").unwrap();
    let path = dir.join("tokenizer.json");
    let tok = WordPiece::from_hf_json(&path).unwrap();
    let mut texts = corpus();
    let sts = shared_data("stsbenchmark/sts-dev.csv");
    texts.extend(sts.lines().flat_map(|l| l.split('\t').skip(5).map(String::from).collect::<Vec<_>>()));
    texts.extend(
        [
            "ÀÉÎÕÜ Ñandú ÇA VA? ŒUVRE Straße İSTANBUL ΣΊΣΥΦΟΣ",
            "a\u{300}\u{301}\u{302} stacked marks, and a lone \u{301} mark",
            "中文字符每个都是一个词，日本語のかなは違う",
            "x".repeat(101).as_str(),
            format!("{} short", "é".repeat(100)).as_str(),
            "unaffable unbelievably [CLS] [SEP] [MASK] [PAD] [UNK] tokens in text",
            "\u{a0}no-break\u{a0}space\u{2003}em\u{3000}ideographic",
            "\u{fffd} replacement and \u{e000} private use and \u{10ffff}",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let reference = run_reference("hf_wordpiece.py", &path, &texts);
    let mut mismatches = Vec::new();
    for (i, (text, want)) in texts.iter().zip(&reference).enumerate() {
        let got = tok.encode(text, usize::MAX);
        if &got != want {
            mismatches.push((i, text.chars().take(60).collect::<String>(), got, want.clone()));
        }
    }
    assert!(texts.len() >= 8000, "corpus has only {} texts", texts.len());
    assert!(mismatches.is_empty(), "{} of {} texts differ from HF tokenizers, e.g. {:?}", mismatches.len(), texts.len(), &mismatches[..mismatches.len().min(3)]);
}
