//! smelt's tokenizer against the HF `tokenizers` Python package built from the same GGUF
//! vocabulary (`tests/reference/hf_tokenize.py`), on a varied corpus: Austen and WikiText lines
//! from ../shared/data, numbers, code, emoji and other scripts, whitespace runs, special tokens.
//! Needs `python3` with `gguf` and `tokenizers` (scripts/test installs them).

use std::process::Command;

use smelt_formats::GgufFile;
use smelt_models::{StreamDecoder, Tokenizer};

fn shared_data(rel: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e} (../shared must sit beside the repository)", p.display()))
}

fn corpus() -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    let austen = shared_data("austen/persuasion.txt");
    v.extend(austen.lines().filter(|l| !l.trim().is_empty()).take(3000).map(String::from));
    let wiki = shared_data("wikitext-2/wiki.valid.tokens");
    v.extend(wiki.lines().filter(|l| !l.trim().is_empty()).take(2500).map(String::from));
    // Whole paragraphs with their newlines.
    v.extend(austen.split("\n\n").skip(40).take(100).map(String::from));
    let extra = [
        "3.14159 2,718 1,000,000 -42 +7 1e-9 0x1F 2024-11-21 10:30pm 99.9% $5 €12 ½ Ⅻ ٣ ४२",
        "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{x:?}\");\n}",
        "def f(a, b=2, *args, **kw):\n\treturn {'a': a, \"b\": b}  # comment\n",
        "SELECT name, COUNT(*) FROM t WHERE id IN (1, 2) GROUP BY name;",
        "<html><body class=\"x\">Hi &amp; bye</body></html>",
        "emoji 😀😃🏳️‍🌈 👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
        "日本語のテキスト、中文文本，한국어 텍스트",
        "العربية والعبرية עברית",
        "हिन्दी में लिखा गया पाठ, তামিল தமிழ்",
        "Ελληνικά, Русский, Ʃtrange ǅ ligatures ﬁ ﬀ",
        "combining: e\u{301} a\u{308} o\u{303}\u{31b}",
        "   leading spaces",
        "trailing spaces   ",
        "many     spaces    between\t\ttabs\n\n\nnewlines\r\nand CRLF",
        "\n\n\n",
        " ",
        "",
        "don't won't they're I'm we've you'll he'd IT'S DON'T",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|><|endoftext|>text<|im_end|>",
        "almost special <|im_start and <|im_end| and <|endoftext",
        "<repo_name>smelt<file_sep>src/main.rs",
        "control \u{0}\u{1}\u{7f} chars and \u{200b}zero\u{feff}width",
        "a'b'c'd's 'll''ll",
        "----====****____....////||||",
        "!!!???...,,,;;;:::",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "https://example.com/path?query=1&b=2#frag user@example.org",
        "Mixed123Numbers456in789Words and 0.5x",
        "bytes without tokens: a\u{4}b c\u{13}\u{14}d \u{50000}\u{90000} end",
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    for n in [0u64, 7, 42, 1234, 99999, 1234567890, u64::MAX] {
        v.push(format!("{n} items, {:.3} ratio, {}th", n as f64 / 7.0, n % 100));
    }
    v
}

fn model() -> (GgufFile, Tokenizer) {
    let f = GgufFile::open(smelt_assets::ensure("smollm2-135m").unwrap()).unwrap();
    let t = Tokenizer::from_gguf(&f.header).unwrap();
    (f, t)
}

#[test]
fn token_ids_equal_hf_tokenizers_on_a_varied_corpus() {
    let (f, tok) = model();
    let texts = corpus();
    let dir = std::env::temp_dir().join(format!("smelt-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corpus_path = dir.join("corpus.jsonl");
    let lines: Vec<String> = texts.iter().map(|t| serde_json::to_string(t).unwrap()).collect();
    std::fs::write(&corpus_path, lines.join("\n") + "\n").unwrap();
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/hf_tokenize.py");
    let out = Command::new(&python).arg(script).arg(f.path().unwrap()).arg(&corpus_path).output().expect("run python");
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.status.success(), "reference tokenizer failed (needs `pip install gguf tokenizers`):\n{}", String::from_utf8_lossy(&out.stderr));
    let reference: Vec<Vec<u32>> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
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
