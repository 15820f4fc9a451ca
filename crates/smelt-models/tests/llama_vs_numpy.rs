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
