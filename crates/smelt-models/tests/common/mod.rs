//! Helpers shared by the integration tests: the varied text corpus and running a reference
//! script on it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn shared_data_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(rel)
}

pub fn shared_data(rel: &str) -> String {
    let p = shared_data_path(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e} (../shared must sit beside the repository)", p.display()))
}

pub fn corpus() -> Vec<String> {
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

/// Runs `tests/reference/SCRIPT MODEL CORPUS.jsonl` (the texts as JSON lines) and parses its
/// output: one JSON list of token ids per text.
pub fn run_reference(script: &str, model: &Path, texts: &[String]) -> Vec<Vec<u32>> {
    let dir = std::env::temp_dir().join(format!("smelt-ref-{}-{script}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corpus_path = dir.join("corpus.jsonl");
    let lines: Vec<String> = texts.iter().map(|t| serde_json::to_string(t).unwrap()).collect();
    std::fs::write(&corpus_path, lines.join("\n") + "\n").unwrap();
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let script_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference").join(script);
    let out = Command::new(&python).arg(&script_path).arg(model).arg(&corpus_path).output().expect("run python");
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.status.success(), "{script} failed (scripts/test installs its packages):\n{}", String::from_utf8_lossy(&out.stderr));
    let reference: Vec<Vec<u32>> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(reference.len(), texts.len());
    reference
}
