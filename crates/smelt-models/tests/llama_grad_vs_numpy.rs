//! The whole decoder's gradients against a float64 numpy forward and backward
//! (`tests/reference/llama_grad_numpy.py`; the fixture `tests/reference/llama_tiny/` beside it):
//! a tiny random Llama of two blocks of different widths (GQA 4/2 then 2/1 heads, FFN 24 then
//! 16), tied embeddings, interleaved RoPE, three causal sequences, cross-entropy on the logits
//! plus an MSE on the hidden states after block 0.

use std::path::PathBuf;

use smelt_formats::safetensors::SafetensorsFile;
use smelt_kernels::pool::ThreadPool;
use smelt_models::backward::{cross_entropy, mse, LlamaTrain};
use smelt_models::llama::{LayerShape, LlamaConfig};

/// Largest error allowed per tensor, relative to the tensor's largest reference gradient.
const GRAD_TOL: f64 = 1e-4;
const GRAD_FLOOR: f64 = 1e-6;

#[test]
fn decoder_gradients_match_numpy() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/llama_tiny");
    let case: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
    let c = &case["config"];
    let u = |k: &str| c[k].as_u64().unwrap() as usize;
    let shapes: Vec<LayerShape> = c["shapes"].as_array().unwrap().iter().map(|s| LayerShape { n_heads: s[0].as_u64().unwrap() as usize, n_kv_heads: s[1].as_u64().unwrap() as usize, ffn_dim: s[2].as_u64().unwrap() as usize }).collect();
    let cfg = LlamaConfig { dim: u("dim"), n_layers: shapes.len(), shapes, head_dim: u("head_dim"), vocab: u("vocab"), norm_eps: c["norm_eps"].as_f64().unwrap() as f32, rope_theta: c["rope_theta"].as_f64().unwrap(), rope_dim: u("rope_dim"), rope_scale: 1.0, ctx_train: u("ctx_train") };
    let st = SafetensorsFile::open(dir.join("model.safetensors")).unwrap();
    let model = LlamaTrain::from_fn(cfg, false, &mut |name, _, _| Ok(st.tensor_f32(name, None)?)).unwrap();
    let seqs: Vec<Vec<u32>> = serde_json::from_value(case["seqs"].clone()).unwrap();
    let targets: Vec<u32> = serde_json::from_value(case["targets"].clone()).unwrap();
    let hidden_target: Vec<f32> = case["hidden_target"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)).collect();
    let (hl, hw) = (case["hidden_layer"].as_u64().unwrap() as usize, case["hidden_weight"].as_f64().unwrap() as f32);

    // Saved activations on 1 and 2 threads, and recomputed in the backward.
    for (threads, recompute) in [(1, false), (2, false), (2, true)] {
        let pool = ThreadPool::new(threads);
        let mut model = model.clone();
        model.recompute = recompute;
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let acts = model.forward(&pool, &refs).unwrap();
        let mut dlogits = vec![0f32; acts.logits.len()];
        let mut loss = cross_entropy(&acts.logits, &targets, model.cfg.vocab, &mut dlogits).unwrap();
        let mut dh = vec![0f32; hidden_target.len()];
        loss += hw * mse(acts.hidden(hl), &hidden_target, &mut dh);
        dh.iter_mut().for_each(|g| *g *= hw);
        let want = case["loss"].as_f64().unwrap();
        assert!((loss as f64 - want).abs() < 1e-5 * want.abs(), "loss {loss} vs numpy {want}");

        let mut grads = vec![0f32; model.params.len()];
        model.backward(&pool, &acts, &dlogits, &[(hl, &dh)], &mut grads).unwrap();
        let reference = SafetensorsFile::open(dir.join("grads.safetensors")).unwrap();
        for slot in &model.params.slots {
            let want = reference.tensor_f32(&slot.name, Some(&slot.shape)).unwrap();
            let got = &grads[slot.range.clone()];
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            let err = got.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
            assert!(scale > 0.0, "{}: the reference gradient is zero, the check is empty", slot.name);
            assert!(err <= GRAD_TOL * scale + GRAD_FLOOR, "{} ({threads} threads, recompute {recompute}): max error {err:.3e}, largest gradient {scale:.3e}", slot.name);
        }
    }
}

/// The training forward on SmolLM2-135M (its Q4_1 weights widened to f32 by `from_llama`) gives
/// the float64 numpy reference's logits at the last prompt position (`llama_reference.json`).
#[test]
fn training_forward_matches_numpy_on_smollm2() {
    use smelt_formats::npy::read_npy;
    use smelt_models::{Llama, LoadOptions};
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let model = LlamaTrain::from_llama(&Llama::open(&path, LoadOptions::default()).unwrap()).unwrap();
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/llama_reference.json")).unwrap()).unwrap();
    let case = &r["cases"][0];
    let prompt: Vec<u32> = case["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let want = read_npy(&std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference").join(case["logits"].as_str().unwrap())).unwrap()).unwrap().data.to_f32();
    let acts = model.forward(&ThreadPool::new(2), &[&prompt]).unwrap();
    let v = model.cfg.vocab;
    let last = &acts.logits[(prompt.len() - 1) * v..prompt.len() * v];
    let max_err = last.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("training forward on SmolLM2: max |logit error| {max_err}");
    assert!(max_err <= 2e-4, "max |logit error| {max_err}");
}
