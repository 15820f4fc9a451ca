//! The same model as GGUF and as an HF directory (config.json, F16 safetensors, tokenizer.json;
//! made by `tests/reference/gguf_to_hf.py`, which undoes llama.cpp's Q/K row permutation):
//! smelt must read both forms identically.
//! Needs `python3` with `gguf`, `numpy` and `tokenizers` (scripts/test installs them).

use std::process::Command;

use smelt_formats::{GgmlType, GgufFile};
use smelt_kernels::pool::ThreadPool;
use smelt_models::tokenizer::hf::hf_chat_template;
use smelt_models::{KvType, Llama, LoadOptions, Tokenizer};

#[test]
fn gguf_and_hf_forms_give_the_same_logits_tokens_and_template() {
    let gguf_path = smelt_assets::ensure("smollm2-135m").unwrap();
    let dir = std::env::temp_dir().join(format!("smelt-hf-{}", std::process::id()));
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/gguf_to_hf.py"))
        .arg(&gguf_path)
        .arg(&dir)
        .output()
        .expect("run python");
    assert!(out.status.success(), "conversion failed:\n{}", String::from_utf8_lossy(&out.stderr));

    // Tokenizers: tokenizer.json and the GGUF vocabulary give the same ids.
    let gguf = GgufFile::open(&gguf_path).unwrap();
    let t_gguf = Tokenizer::from_gguf(&gguf.header).unwrap();
    let t_hf = Tokenizer::from_hf_json(&dir.join("tokenizer.json")).unwrap();
    let texts = ["Hello world, it's 2024!", "<|im_start|>user\nhi<|im_end|>\n", "emoji 😀 and 日本語", "  spaces\n\nand\ttabs"];
    for t in texts {
        assert_eq!(t_gguf.encode(t, true), t_hf.encode(t, true), "{t:?}");
    }
    assert_eq!((t_gguf.bos, t_gguf.eos), (t_hf.bos, t_hf.eos));
    assert_eq!(hf_chat_template(&dir).unwrap().as_deref(), gguf.header.get("tokenizer.chat_template").and_then(|v| v.as_str()));

    // Models: the GGUF weights rounded to F16 as the HF file stores them.
    let a = Llama::open(&gguf_path, LoadOptions { weight_type: Some(GgmlType::F16) }).unwrap();
    let b = Llama::from_hf_dir(&dir, LoadOptions::default()).unwrap();
    assert_eq!(a.cfg, b.cfg);
    assert_eq!(a.n_params(), b.n_params());
    let pool = ThreadPool::new(2);
    let prompt = t_gguf.encode("The capital of France is", true);
    let (mut sa, mut sb) = (a.session_with(256, KvType::F32), b.session_with(256, KvType::F32));
    let la = a.forward(&pool, &mut sa, &prompt, false).unwrap().to_vec();
    let lb = b.forward(&pool, &mut sb, &prompt, false).unwrap().to_vec();
    let max_err = la.iter().zip(&lb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    eprintln!("GGUF vs HF: max |logit difference| {max_err}");
    assert!(max_err < 1e-3, "max |logit difference| {max_err}");
    let argmax = |v: &[f32]| v.iter().enumerate().fold((0, f32::MIN), |m, (i, &x)| if x > m.1 { (i, x) } else { m }).0 as u32;
    let (mut ta, mut tb) = (argmax(&la), argmax(&lb));
    for _ in 0..24 {
        assert_eq!(ta, tb);
        ta = argmax(a.forward(&pool, &mut sa, &[ta], false).unwrap());
        tb = argmax(b.forward(&pool, &mut sb, &[tb], false).unwrap());
    }
    std::fs::remove_dir_all(&dir).ok();
}
