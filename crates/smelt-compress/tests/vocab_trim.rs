//! Vocabulary trimming on SmolLM2 with an Austen corpus: the corpus tokenizes exactly as before
//! (smelt's tokenizer on the trimmed file, ids mapped back), the HF `tokenizers` package built
//! from the trimmed file's own vocabulary and merges (`smelt-models/tests/reference/
//! hf_tokenize.py`) gives the same ids as smelt on it, and every kept token's logit is the
//! untrimmed model's.
//!
//! Needs `python3` with gguf and tokenizers (scripts/test installs them; `SMELT_PYTHON`
//! overrides).

use std::process::Command;

use smelt_compress::prune::vocab::{choose_vocab, write_trimmed};
use smelt_formats::GgufFile;
use smelt_kernels::pool::ThreadPool;
use smelt_models::{KvType, Llama, LoadOptions, Tokenizer};

fn austen(name: &str, chars: usize) -> String {
    let p = format!("{}/../../../shared/data/austen/{name}", env!("CARGO_MANIFEST_DIR"));
    let t = std::fs::read_to_string(&p).expect("../shared beside the repository");
    t.chars().take(chars).collect()
}

#[test]
fn trimmed_vocabulary_tokenizes_the_corpus_alike_and_keeps_logits() {
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let file = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&file.header).unwrap();
    let corpus = austen("persuasion.txt", 150_000);
    // The corpus as the texts it is given in: the whole, and each paragraph on its own (the
    // whitespace before a paragraph tokenizes differently alone).
    let paragraphs: Vec<&str> = corpus.split("\n\n").filter(|p| !p.trim().is_empty()).collect();
    let texts: Vec<&str> = std::iter::once(corpus.as_str()).chain(paragraphs.iter().copied()).collect();
    let v = choose_vocab(&file, &tok, &texts).unwrap();
    eprintln!("vocabulary {} -> {} ({} used, {} for merges)", v.vocab_before, v.kept.len(), v.used, v.closure);
    assert!(v.kept.len() < v.vocab_before / 3, "{} kept", v.kept.len());
    let dir = std::env::temp_dir().join(format!("smelt-vocab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("trimmed.gguf");
    write_trimmed(&file, &v.kept, &out).unwrap();
    let trimmed = GgufFile::open(&out).unwrap();
    let tok2 = Tokenizer::from_gguf(&trimmed.header).unwrap();
    assert_eq!(tok2.vocab_size(), v.kept.len());
    assert_eq!(tok2.bos.map(|b| v.kept[b as usize]), tok.bos, "BOS renumbered");

    // The corpus tokenizes alike (ids mapped back to the old ones), whole and by paragraph.
    let whole: Vec<u32> = tok2.encode(&corpus, false).iter().map(|&i| v.kept[i as usize]).collect();
    assert!(whole == tok.encode(&corpus, false), "the whole corpus tokenizes differently");
    let mut mapped_all = Vec::new();
    for p in &paragraphs {
        let old = tok.encode(p, false);
        let new = tok2.encode(p, false);
        let mapped: Vec<u32> = new.iter().map(|&i| v.kept[i as usize]).collect();
        assert_eq!(mapped, old, "{p:?}");
        mapped_all.push(new);
    }
    // The HF tokenizer built from the trimmed file agrees with smelt's on it.
    let lines = dir.join("corpus.jsonl");
    std::fs::write(&lines, paragraphs.iter().take(300).map(|p| serde_json::to_string(p).unwrap() + "\n").collect::<String>()).unwrap();
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../smelt-models/tests/reference/hf_tokenize.py");
    let o = Command::new(&python).arg(script).arg(&out).arg(&lines).output().unwrap();
    assert!(o.status.success(), "{python} {script}: {}", String::from_utf8_lossy(&o.stderr));
    let hf: Vec<Vec<u32>> = String::from_utf8(o.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(hf.len(), paragraphs.len().min(300));
    for (i, (h, s)) in hf.iter().zip(&mapped_all).enumerate() {
        assert_eq!(h, s, "paragraph {i}: HF tokenizers and smelt differ on the trimmed file");
    }

    // Every kept token's logit is the untrimmed model's.
    let pool = ThreadPool::new(2);
    let a = Llama::open(&path, LoadOptions::default()).unwrap();
    let b = Llama::open(&out, LoadOptions::default()).unwrap();
    let prompt = tok.encode(&paragraphs[20..24].join("\n\n"), false);
    let prompt = &prompt[..prompt.len().min(200)];
    let prompt2: Vec<u32> = prompt.iter().map(|&i| v.kept.binary_search(&i).unwrap() as u32).collect();
    let (mut sa, mut sb) = (a.session_with(512, KvType::F32), b.session_with(512, KvType::F32));
    let la = a.forward(&pool, &mut sa, prompt, false).unwrap().to_vec();
    let lb = b.forward(&pool, &mut sb, &prompt2, false).unwrap().to_vec();
    let max = lb.iter().enumerate().map(|(i, &x)| (x - la[v.kept[i] as usize]).abs()).fold(0.0f32, f32::max);
    std::fs::remove_dir_all(&dir).ok();
    eprintln!("kept tokens' logits: max |difference| {max}");
    assert!(max <= 1e-5, "max |logit difference| {max}");
}
