//! smelt's Llama forward pass against the float64 numpy implementation in
//! `tests/reference/llama_numpy.py` (fixtures beside it): SmolLM2-135M with every weight
//! expanded to F32 (the shipped file's exact values), logits at the last prompt position within
//! a stated tolerance, and 64 greedily generated tokens identical.

use std::path::Path;

use smelt_formats::npy::read_npy;
use smelt_formats::GgmlType;
use smelt_kernels::pool::ThreadPool;
use smelt_models::{KvType, Llama, LoadOptions};

/// Largest allowed |smelt - reference| over all 49,152 logits (f32 arithmetic against f64,
/// SmolLM2's logits span about +-30).
const LOGIT_TOL: f32 = 2e-4;

fn reference() -> serde_json::Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/llama_reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0 as u32
}

#[test]
fn f32_logits_and_greedy_tokens_match_numpy() {
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let model = Llama::open(&path, LoadOptions { weight_type: Some(GgmlType::F32) }).unwrap();
    let pool = ThreadPool::new(2);
    let r = reference();
    for (i, case) in r["cases"].as_array().unwrap().iter().enumerate() {
        let prompt: Vec<u32> = case["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let want: Vec<u32> = case["greedy"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let npy = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference").join(case["logits"].as_str().unwrap())).unwrap();
        let ref_logits = read_npy(&npy).unwrap().data.to_f32();
        let mut sess = model.session_with(512, KvType::F32);
        let logits = model.forward(&pool, &mut sess, &prompt, false).unwrap().to_vec();
        let max_err = logits.iter().zip(&ref_logits).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("case {i}: max |logit error| {max_err}");
        assert!(max_err <= LOGIT_TOL, "case {i}: max |logit error| {max_err} > {LOGIT_TOL}");
        let mut next = argmax(&logits);
        let mut got = Vec::new();
        for _ in 0..want.len() {
            got.push(next);
            next = argmax(model.forward(&pool, &mut sess, &[next], false).unwrap());
        }
        assert_eq!(got, want, "case {i}: greedy tokens differ");
    }
}

/// The default f16 KV cache rounds keys and values to half precision: the logits move a little
/// (bounded here) and greedy decoding still follows the reference.
#[test]
fn f16_kv_cache_stays_close_to_the_reference() {
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let model = Llama::open(&path, LoadOptions { weight_type: Some(GgmlType::F32) }).unwrap();
    let pool = ThreadPool::new(2);
    let r = reference();
    for (i, case) in r["cases"].as_array().unwrap().iter().enumerate() {
        let prompt: Vec<u32> = case["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let want: Vec<u32> = case["greedy"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let npy = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference").join(case["logits"].as_str().unwrap())).unwrap();
        let ref_logits = read_npy(&npy).unwrap().data.to_f32();
        let mut sess = model.session_with(512, KvType::F16);
        let logits = model.forward(&pool, &mut sess, &prompt, false).unwrap().to_vec();
        let max_err = logits.iter().zip(&ref_logits).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("f16 KV case {i}: max |logit error| {max_err}");
        assert!(max_err <= 0.03, "case {i}: {max_err} (observed about 0.012)");
        let mut next = argmax(&logits);
        let mut same = 0;
        for &w in &want {
            if next != w {
                break;
            }
            same += 1;
            next = argmax(model.forward(&pool, &mut sess, &[next], false).unwrap());
        }
        eprintln!("f16 KV case {i}: greedy agrees for {same} of {} tokens", want.len());
        assert!(same >= 16, "case {i}: only {same} greedy tokens agree");
    }
}

/// A Llama GGUF with llama.cpp's optional block biases (Q, K, V, output, gate, up, down): the
/// file is SmolLM2 with biases added to two layers (written here with smelt's GGUF writer,
/// read by the numpy reference through the `gguf` package), and smelt's logits with the file's
/// F32-expanded weights match the float64 reference's. The biases move the logits far more
/// than the tolerance, so a loader that ignored them would fail.
#[test]
fn optional_block_biases_match_numpy() {
    use smelt_formats::gguf::{GgufWriter, TensorSpec};
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let src = smelt_formats::GgufFile::open(&path).unwrap();
    let dir = std::env::temp_dir().join(format!("smelt-bias-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let biased = dir.join("biased.gguf");
    // Deterministic biases, a few tenths in size, on every biasable matrix of layers 0 and 17.
    let bias = |name: &str, rows: u64| -> Vec<f32> {
        let k = name.len() as f32;
        (0..rows).map(|i| 0.3 * ((i as f32) * 0.37 + k).sin()).collect()
    };
    let mut specs = Vec::new();
    let mut extra = std::collections::BTreeMap::new();
    for t in src.tensors() {
        specs.push(TensorSpec { name: t.name.clone(), dims: t.dims.clone(), ty: t.ty });
        let stem = t.name.strip_suffix(".weight").unwrap_or("");
        let biasable = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"].iter().any(|m| stem.ends_with(m));
        if biasable && (stem.starts_with("blk.0.") || stem.starts_with("blk.17.")) {
            let name = format!("{stem}.bias");
            specs.push(TensorSpec { name: name.clone(), dims: vec![t.dims[1]], ty: GgmlType::F32 });
            extra.insert(t.name.clone(), bias(&name, t.dims[1]));
        }
    }
    assert_eq!(extra.len(), 14);
    let mut w = GgufWriter::new(std::io::BufWriter::new(std::fs::File::create(&biased).unwrap()), src.header.version, &src.header.metadata, specs).unwrap();
    for t in src.tensors() {
        w.write_tensor(src.tensor_data(t)).unwrap();
        if let Some(b) = extra.get(&t.name) {
            w.write_tensor(bytemuck::cast_slice(b)).unwrap();
        }
    }
    std::io::Write::flush(&mut w.finish().unwrap()).unwrap();

    let r = reference();
    let prompt: Vec<u32> = r["cases"][0]["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let ids = dir.join("ids.json");
    std::fs::write(&ids, serde_json::to_string(&prompt).unwrap()).unwrap();
    let out = dir.join("logits.npy");
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/llama_numpy.py");
    let st = std::process::Command::new(&python).arg(&script).arg("--logits").arg(&biased).arg(&ids).arg(&out).status().unwrap();
    assert!(st.success(), "{python} {} failed (it needs gguf and numpy: scripts/test installs them)", script.display());
    let want = read_npy(&std::fs::read(&out).unwrap()).unwrap().data.to_f32();

    let model = Llama::open(&biased, LoadOptions { weight_type: Some(GgmlType::F32) }).unwrap();
    let pool = ThreadPool::new(2);
    let mut sess = model.session_with(512, KvType::F32);
    let got = model.forward(&pool, &mut sess, &prompt, false).unwrap().to_vec();
    let max_err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let unbiased = read_npy(&std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/logits_0.npy")).unwrap()).unwrap().data.to_f32();
    let moved = want.iter().zip(&unbiased).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    std::fs::remove_dir_all(&dir).ok();
    eprintln!("biased model: max |logit error| {max_err}; the biases move the reference's logits by up to {moved}");
    assert!(moved > 0.5, "the biases should move the logits ({moved})");
    assert!(max_err <= LOGIT_TOL, "max |logit error| {max_err} > {LOGIT_TOL}");
}
