//! The whole encoder's gradients against a float64 numpy forward and backward
//! (`tests/reference/bert_grad_numpy.py`; the fixture `tests/reference/bert_tiny/` beside it): a
//! tiny random BERT of two layers, the second with a pruned head, three sequences, a cosine loss
//! on the pooled sentence vectors plus an MSE on the hidden states after layer 0.

use std::path::PathBuf;

use smelt_formats::safetensors::SafetensorsFile;
use smelt_kernels::pool::ThreadPool;
use smelt_models::backward::{cosine_loss, mean_pool_normalize, mean_pool_normalize_backward, mse, BertTrain};

/// Largest error allowed per tensor, relative to the tensor's largest reference gradient: f32
/// arithmetic against f64 over two layers.
const GRAD_TOL: f64 = 1e-4;
/// Absolute floor for tensors whose gradient is (close to) zero.
const GRAD_FLOOR: f64 = 1e-6;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/bert_tiny")
}

#[test]
fn encoder_gradients_match_numpy() {
    let dir = fixture();
    let model = BertTrain::from_dir(&dir).unwrap();
    assert_eq!(model.heads, vec![4, 3], "the fixture prunes a head of layer 1");
    let case: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
    let seqs: Vec<Vec<u32>> = serde_json::from_value(case["seqs"].clone()).unwrap();
    let flat = |k: &str| -> Vec<f32> { case[k].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)).collect() };
    let (targets, hidden_target) = (flat("targets"), flat("hidden_target"));
    let (hl, hw) = (case["hidden_layer"].as_u64().unwrap() as usize, case["hidden_weight"].as_f64().unwrap() as f32);
    let d = model.cfg.hidden_size;

    // Saved activations on 1 and 2 threads, and recomputed in the backward.
    for (threads, recompute) in [(1, false), (2, false), (2, true)] {
        let pool = ThreadPool::new(threads);
        let mut model = model.clone();
        model.recompute = recompute;
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let acts = model.forward(&pool, &refs).unwrap();
        let mut e = vec![0f32; seqs.len() * d];
        let norms = mean_pool_normalize(&acts.out, &acts.starts, d, &mut e);
        let mut de = vec![0f32; e.len()];
        let mut loss = cosine_loss(&e, &targets, d, &mut de);
        let mut d_out = vec![0f32; acts.out.len()];
        mean_pool_normalize_backward(&e, &norms, &acts.starts, &de, d, &mut d_out);
        let mut dh = vec![0f32; hidden_target.len()];
        loss += hw * mse(acts.hidden(hl), &hidden_target, &mut dh);
        dh.iter_mut().for_each(|g| *g *= hw);
        let want = case["loss"].as_f64().unwrap();
        assert!((loss as f64 - want).abs() < 1e-5 * want.abs(), "loss {loss} vs numpy {want}");

        let mut grads = vec![0f32; model.params.len()];
        model.backward(&pool, &acts, &d_out, &[(hl, &dh)], &mut grads).unwrap();
        let reference = SafetensorsFile::open(dir.join("grads.safetensors")).unwrap();
        for slot in &model.params.slots {
            let want = reference.tensor_f32(&slot.name, Some(&slot.shape)).unwrap();
            let got = &grads[slot.range.clone()];
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            let err = got.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
            assert!(err <= GRAD_TOL * scale + GRAD_FLOOR, "{} ({threads} threads, recompute {recompute}): max error {err:.3e}, largest gradient {scale:.3e}", slot.name);
            assert!(scale > 0.0 || slot.name.contains("token_type"), "{}: the reference gradient is zero, the check is empty", slot.name);
        }
    }
}

/// The training forward on all-MiniLM-L6-v2 gives sentence-transformers' recorded embeddings
/// (`encoder_reference.py`'s fixture; its first rows are STS-B dev sentences).
#[test]
fn training_forward_matches_sentence_transformers() {
    let dir = smelt_assets::ensure("all-minilm-l6-v2").unwrap();
    let enc = smelt_models::Encoder::load(&dir, None).unwrap();
    let model = BertTrain::from_dir(&dir).unwrap();
    let text = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/stsbenchmark/sts-dev.csv")).unwrap();
    let texts: Vec<String> = text.lines().take(20).flat_map(|l| {
        let f: Vec<&str> = l.split('\t').collect();
        [f[5].to_string(), f[6].to_string()]
    }).collect();
    let refs = smelt_formats::npy::read_npy(&std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/minilm_l6_st.npy")).unwrap()).unwrap().data.to_f32();
    let d = model.cfg.hidden_size;
    let seqs: Vec<Vec<u32>> = texts.iter().map(|t| enc.tok.encode(t, enc.max_len)).collect();
    let seq_refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let acts = model.forward(&ThreadPool::new(2), &seq_refs).unwrap();
    let mut e = vec![0f32; seqs.len() * d];
    mean_pool_normalize(&acts.out, &acts.starts, d, &mut e);
    for (i, (ours, want)) in e.chunks_exact(d).zip(refs.chunks_exact(d)).enumerate() {
        let c = smelt_models::stats::cosine(ours, want);
        assert!(c > 0.99999, "text {i} {:?}: cosine {c}", texts[i]);
    }
}
