//! Low-rank adapters over a frozen base: gradients against the float64 numpy reference
//! (`tests/reference/lora_grad_numpy.py`, fixture `lora_tiny/` over the tiny decoder of
//! `llama_tiny/`), against finite differences when the base is stored in F16, and the trained
//! adapter applied at inference (and merged into the weights) against the training forward.

use std::path::PathBuf;
use std::sync::Arc;

use smelt_formats::safetensors::SafetensorsFile;
use smelt_formats::GgmlType;
use smelt_kernels::pool::ThreadPool;
use smelt_models::backward::{cross_entropy, mse, LlamaTrain, LoraSpec, LORA_TARGETS};
use smelt_models::linear::Linear;
use smelt_models::llama::{LayerShape, Layer, LlamaConfig};
use smelt_models::ops::{Rope, RopeStyle};
use smelt_models::Llama;

/// Largest error allowed per tensor, relative to the tensor's largest reference gradient.
const GRAD_TOL: f64 = 1e-4;
const GRAD_FLOOR: f64 = 1e-6;

fn reference(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference").join(dir)
}

struct Case {
    llama: Llama,
    seqs: Vec<Vec<u32>>,
    targets: Vec<u32>,
    hidden_target: Vec<f32>,
    hidden_layer: usize,
    hidden_weight: f32,
}

/// The tiny decoder of `llama_tiny/` as a loaded model, its matrices stored as `ty`.
fn tiny(ty: GgmlType) -> Case {
    let dir = reference("llama_tiny");
    let case: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
    let c = &case["config"];
    let u = |k: &str| c[k].as_u64().unwrap() as usize;
    let shapes: Vec<LayerShape> = c["shapes"].as_array().unwrap().iter().map(|s| LayerShape { n_heads: s[0].as_u64().unwrap() as usize, n_kv_heads: s[1].as_u64().unwrap() as usize, ffn_dim: s[2].as_u64().unwrap() as usize }).collect();
    let cfg = LlamaConfig { dim: u("dim"), n_layers: shapes.len(), shapes, head_dim: u("head_dim"), vocab: u("vocab"), norm_eps: c["norm_eps"].as_f64().unwrap() as f32, rope_theta: c["rope_theta"].as_f64().unwrap(), rope_dim: u("rope_dim"), rope_scale: 1.0, ctx_train: u("ctx_train") };
    let st = SafetensorsFile::open(dir.join("model.safetensors")).unwrap();
    let mat = |name: &str, rows: usize, cols: usize| Linear::from_f32(name, rows, cols, st.tensor_f32(name, Some(&[rows, cols])).unwrap(), Some(ty)).unwrap();
    let vec = |name: &str| st.tensor_f32(name, None).unwrap();
    let d = cfg.dim;
    let layers = (0..cfg.n_layers)
        .map(|i| {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let (q, kv, f) = (cfg.q_dim(i), cfg.kv_dim(i), cfg.shapes[i].ffn_dim);
            Layer { attn_norm: vec(&n("attn_norm")), wq: mat(&n("attn_q"), q, d), wk: mat(&n("attn_k"), kv, d), wv: mat(&n("attn_v"), kv, d), wo: mat(&n("attn_output"), d, q), ffn_norm: vec(&n("ffn_norm")), gate: mat(&n("ffn_gate"), f, d), up: mat(&n("ffn_up"), f, d), down: mat(&n("ffn_down"), d, f) }
        })
        .collect();
    let rope = Rope::new(RopeStyle::Interleaved, cfg.rope_dim, cfg.rope_theta, cfg.rope_scale);
    let llama = Llama { embed: mat("token_embd.weight", cfg.vocab, d), output: None, output_norm: vec("output_norm.weight"), layers, rope, file: None, cfg };
    Case {
        llama,
        seqs: serde_json::from_value(case["seqs"].clone()).unwrap(),
        targets: serde_json::from_value(case["targets"].clone()).unwrap(),
        hidden_target: case["hidden_target"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)).collect(),
        hidden_layer: case["hidden_layer"].as_u64().unwrap() as usize,
        hidden_weight: case["hidden_weight"].as_f64().unwrap() as f32,
    }
}

/// Adapters on every block matrix, valued as the fixture's.
fn adapted(case: &Case) -> LlamaTrain {
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(reference("lora_tiny").join("case.json")).unwrap()).unwrap();
    let spec = LoraSpec { rank: meta["rank"].as_u64().unwrap() as usize, alpha: meta["alpha"].as_f64().unwrap() as f32, targets: LORA_TARGETS.iter().map(|s| s.to_string()).collect() };
    let mut m = LlamaTrain::lora(&case.llama, &spec, &mut || 0.5).unwrap();
    let st = SafetensorsFile::open(reference("lora_tiny").join("adapter.safetensors")).unwrap();
    for slot in m.params.slots.clone() {
        m.params.data[slot.range.clone()].copy_from_slice(&st.tensor_f32(&slot.name, Some(&slot.shape)).unwrap());
    }
    m
}

/// The loss of `llama_grad_numpy.py` and, when asked, its gradient.
fn loss(m: &LlamaTrain, case: &Case, pool: &ThreadPool, grads: Option<&mut [f32]>) -> f32 {
    let refs: Vec<&[u32]> = case.seqs.iter().map(Vec::as_slice).collect();
    let acts = m.forward(pool, &refs).unwrap();
    let mut dlogits = vec![0f32; acts.logits.len()];
    let mut l = cross_entropy(&acts.logits, &case.targets, m.cfg.vocab, &mut dlogits).unwrap();
    let mut dh = vec![0f32; case.hidden_target.len()];
    l += case.hidden_weight * mse(acts.hidden(case.hidden_layer), &case.hidden_target, &mut dh);
    dh.iter_mut().for_each(|g| *g *= case.hidden_weight);
    if let Some(g) = grads {
        m.backward(pool, &acts, &dlogits, &[(case.hidden_layer, &dh)], g).unwrap();
    }
    l
}

#[test]
fn lora_gradients_match_numpy() {
    let case = tiny(GgmlType::F32);
    let base = adapted(&case);
    let want_loss: serde_json::Value = serde_json::from_slice(&std::fs::read(reference("lora_tiny").join("case.json")).unwrap()).unwrap();
    let want_loss = want_loss["loss"].as_f64().unwrap();
    let reference = SafetensorsFile::open(reference("lora_tiny").join("grads.safetensors")).unwrap();
    assert_eq!(base.params.slots.len(), 2 * 7 * case.llama.layers.len(), "one A and one B per block matrix");
    for (threads, recompute) in [(1, false), (2, false), (2, true)] {
        let pool = ThreadPool::new(threads);
        let mut m = base.clone();
        m.recompute = recompute;
        let mut grads = vec![0f32; m.params.len()];
        let l = loss(&m, &case, &pool, Some(&mut grads));
        assert!((l as f64 - want_loss).abs() < 1e-5 * want_loss, "loss {l} vs numpy {want_loss}");
        for slot in &m.params.slots {
            let want = reference.tensor_f32(&slot.name, Some(&slot.shape)).unwrap();
            let got = &grads[slot.range.clone()];
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            let err = got.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
            assert!(scale > 0.0, "{}: the reference gradient is zero, the check is empty", slot.name);
            assert!(err <= GRAD_TOL * scale + GRAD_FLOOR, "{} ({threads} threads, recompute {recompute}): max error {err:.3e}, largest gradient {scale:.3e}", slot.name);
        }
    }
}

/// With the base stored in F16 (a frozen matrix of another type than f32), the adapters'
/// gradient against central finite differences of the f32 loss on 48 coordinates.
#[test]
fn lora_gradients_over_an_f16_base_match_finite_differences() {
    let case = tiny(GgmlType::F16);
    let mut m = adapted(&case);
    let pool = ThreadPool::new(2);
    let mut grads = vec![0f32; m.params.len()];
    loss(&m, &case, &pool, Some(&mut grads));
    let (mut err2, mut ref2) = (0f64, 0f64);
    let h = 1e-2f32;
    for (k, slot) in m.params.slots.clone().iter().enumerate().filter(|(k, _)| k % 7 < 2) {
        // Two coordinates of every 7th tensor pair: spread over the layers and kinds.
        for j in [k % slot.range.len(), (7 * k + 3) % slot.range.len()] {
            let at = slot.range.start + j;
            let old = m.params.data[at];
            m.params.data[at] = old + h;
            let up = loss(&m, &case, &pool, None);
            m.params.data[at] = old - h;
            let down = loss(&m, &case, &pool, None);
            m.params.data[at] = old;
            let fd = ((up - down) / (2.0 * h)) as f64;
            err2 += (fd - grads[at] as f64).powi(2);
            ref2 += fd * fd;
        }
    }
    let rel = (err2 / ref2).sqrt();
    assert!(ref2 > 0.0, "finite differences are all zero: the check is empty");
    assert!(rel < 1e-2, "relative error of the adapter gradient {rel:.3e} against finite differences");
}

/// The adapter written from training, applied at inference (`Llama::apply_lora`, llama.cpp's
/// `W x + s B (A x)`) and merged into the weights (`W + s B A`), gives the training forward's
/// logits, one token at a time (decode) and all at once (prompt).
#[test]
fn trained_adapter_applies_and_merges_as_in_training() {
    let case = tiny(GgmlType::F32);
    let m = adapted(&case);
    let pool = ThreadPool::new(2);
    let seq = &case.seqs[1];
    let want = m.forward(&pool, &[seq]).unwrap().logits;
    let alpha = 3.0;
    let adapter = m.adapter(alpha).unwrap();
    let dir = std::env::temp_dir().join(format!("smelt-lora-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("adapter.gguf");
    adapter.save(&path, Some("tiny")).unwrap();
    let adapter = smelt_models::lora::LoraAdapter::open(&path).unwrap();
    std::fs::remove_dir_all(&dir).ok();

    let mut live = tiny(GgmlType::F32).llama;
    live.apply_lora(&adapter, 1.0).unwrap();
    let mut merged = tiny(GgmlType::F32).llama;
    for (name, pair) in &adapter.pairs {
        let w = merged.linear_mut(name).unwrap();
        let mut values = vec![0f32; w.rows * w.cols];
        for (r, row) in values.chunks_exact_mut(w.cols).enumerate() {
            w.row_f32(r, row).unwrap();
        }
        values.iter_mut().zip(pair.delta(adapter.scale(pair.rank))).for_each(|(v, d)| *v += d);
        *w = Linear::from_f32(name, w.rows, w.cols, values, None).unwrap();
    }
    let v = m.cfg.vocab;
    for model in [&live, &merged] {
        let mut sess = model.session_with(64, smelt_models::KvType::F32);
        let all = model.forward(&pool, &mut sess, seq, true).unwrap().to_vec();
        let mut sess = model.session_with(64, smelt_models::KvType::F32);
        let mut one = Vec::new();
        for &t in seq.iter() {
            one.extend_from_slice(model.forward(&pool, &mut sess, &[t], false).unwrap());
        }
        for got in [&all, &one] {
            let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert_eq!(got.len(), seq.len() * v);
            assert!(err < 1e-4, "logits differ from the training forward by {err}");
        }
    }
    // A pair for a matrix the model does not have, or of another shape: refused, nothing changed.
    let mut other = adapter.clone();
    let pair = other.pairs.remove("blk.0.attn_q.weight").unwrap();
    other.pairs.insert("blk.7.attn_q.weight".into(), pair.clone());
    let mut plain = tiny(GgmlType::F32).llama;
    assert!(plain.apply_lora(&other, 1.0).unwrap_err().to_string().contains("another base"));
    let mut wrong = adapter.clone();
    wrong.pairs.insert("blk.0.attn_k.weight".into(), Arc::clone(&pair));
    assert!(plain.apply_lora(&wrong, 1.0).is_err());
    assert!(plain.layers[0].wq.lora().is_none(), "a refused adapter changed the model");
}
