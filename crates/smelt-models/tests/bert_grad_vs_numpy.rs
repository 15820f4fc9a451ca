//! The whole encoder's gradients against a float64 numpy forward and backward
//! (`tests/reference/bert_grad_numpy.py`; the fixture `tests/reference/bert_tiny/` beside it): a
//! tiny random BERT of two layers, the second with a pruned head, three sequences, a cosine loss
//! on the pooled sentence vectors plus an MSE on the hidden states after layer 0; and the same with
//! the int8 path's fake quantization (quantization-aware training).

use std::path::PathBuf;

use smelt_formats::safetensors::SafetensorsFile;
use smelt_kernels::pool::ThreadPool;
use smelt_models::backward::{cosine_loss, mean_pool_normalize, mean_pool_normalize_backward, mse, ActQuant, BertTrain};
use smelt_models::int8::{fake_weights, quantize_weights};

/// Largest error allowed per tensor, relative to the tensor's largest reference gradient: f32
/// arithmetic against f64 over two layers.
const GRAD_TOL: f64 = 1e-4;
/// Absolute floor for tensors whose gradient is (close to) zero.
const GRAD_FLOOR: f64 = 1e-6;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/bert_tiny")
}

/// The loss of the fixture's case and every parameter's gradient, for `model` as it stands.
fn loss_and_grads(model: &BertTrain, pool: &ThreadPool, case: &serde_json::Value) -> (f32, Vec<f32>) {
    let seqs: Vec<Vec<u32>> = serde_json::from_value(case["seqs"].clone()).unwrap();
    let flat = |k: &str| -> Vec<f32> { case[k].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)).collect() };
    let (targets, hidden_target) = (flat("targets"), flat("hidden_target"));
    let (hl, hw) = (case["hidden_layer"].as_u64().unwrap() as usize, case["hidden_weight"].as_f64().unwrap() as f32);
    let d = model.cfg.hidden_size;
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let acts = model.forward(pool, &refs).unwrap();
    let mut e = vec![0f32; seqs.len() * d];
    let norms = mean_pool_normalize(&acts.out, &acts.starts, d, &mut e);
    let mut de = vec![0f32; e.len()];
    let mut loss = cosine_loss(&e, &targets, d, &mut de);
    let mut d_out = vec![0f32; acts.out.len()];
    mean_pool_normalize_backward(&e, &norms, &acts.starts, &de, d, &mut d_out);
    let mut dh = vec![0f32; hidden_target.len()];
    loss += hw * mse(acts.hidden(hl), &hidden_target, &mut dh);
    dh.iter_mut().for_each(|g| *g *= hw);
    let mut grads = vec![0f32; model.params.len()];
    model.backward(pool, &acts, &d_out, &[(hl, &dh)], &mut grads).unwrap();
    (loss, grads)
}

/// Checks the loss and every gradient of `model` (saved activations on 1 and 2 threads, and
/// recomputed in the backward) against numpy's `want_loss` and `grads_file`.
fn check_against(model: &BertTrain, case: &serde_json::Value, want_loss: f64, grads_file: &str) {
    let reference = SafetensorsFile::open(fixture().join(grads_file)).unwrap();
    for (threads, recompute) in [(1, false), (2, false), (2, true)] {
        let pool = ThreadPool::new(threads);
        let mut model = model.clone();
        model.recompute = recompute;
        let (loss, grads) = loss_and_grads(&model, &pool, case);
        assert!((loss as f64 - want_loss).abs() < 1e-5 * want_loss.abs(), "loss {loss} vs numpy {want_loss}");
        for slot in &model.params.slots {
            let want = reference.tensor_f32(&slot.name, Some(&slot.shape)).unwrap();
            let got = &grads[slot.range.clone()];
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            let err = got.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
            assert!(err <= GRAD_TOL * scale + GRAD_FLOOR, "{grads_file} {} ({threads} threads, recompute {recompute}): max error {err:.3e}, largest gradient {scale:.3e}", slot.name);
            assert!(scale > 0.0 || slot.name.contains("token_type"), "{}: the reference gradient is zero, the check is empty", slot.name);
        }
    }
}

fn case(name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture().join(name)).unwrap()).unwrap()
}

#[test]
fn encoder_gradients_match_numpy() {
    let model = BertTrain::from_dir(&fixture()).unwrap();
    assert_eq!(model.heads, vec![4, 3], "the fixture prunes a head of layer 1");
    let case = case("case.json");
    check_against(&model, &case, case["loss"].as_f64().unwrap(), "grads.safetensors");
}

/// Training only the top layer (`trained_from = 1`, as a classifier that tunes its last layer
/// does): the backward stops there, the top layer's gradients are still numpy's (the fixture's
/// hidden-state loss is on layer 0, below it), and nothing below gets a gradient.
#[test]
fn a_backward_that_stops_below_the_trained_layers_matches_numpy_above() {
    let mut model = BertTrain::from_dir(&fixture()).unwrap();
    model.trained_from = 1;
    let case = case("case.json");
    assert_eq!(case["hidden_layer"].as_u64(), Some(0), "the fixture's hidden loss must sit below the trained layer");
    let reference = SafetensorsFile::open(fixture().join("grads.safetensors")).unwrap();
    let (_, grads) = loss_and_grads(&model, &ThreadPool::new(2), &case);
    let mut top = 0;
    for slot in &model.params.slots {
        let got = &grads[slot.range.clone()];
        if slot.name.contains("encoder.layer.1.") {
            let want = reference.tensor_f32(&slot.name, Some(&slot.shape)).unwrap();
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            let err = got.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
            assert!(scale > 0.0 && err <= GRAD_TOL * scale + GRAD_FLOOR, "{}: max error {err:.3e}, largest gradient {scale:.3e}", slot.name);
            top += 1;
        } else {
            assert!(got.iter().all(|&g| g == 0.0), "{} is below the trained layers but got a gradient", slot.name);
        }
    }
    assert_eq!(top, 16, "every tensor of layer 1 checked");
}

/// Quantization-aware training of the int8 path: the fixture's matrices fake-quantized by
/// smelt's int8 quantizer (the one inference uses) equal numpy's round trip bit for bit, and the
/// forward with fake-quantized inputs and its straight-through backward give numpy's loss and
/// gradients (`int8_*` files of the fixture).
#[test]
fn int8_fake_quantized_gradients_match_numpy() {
    let mut model = BertTrain::from_dir(&fixture()).unwrap();
    let int8 = case("int8_case.json");
    let weights = SafetensorsFile::open(fixture().join("int8_weights.safetensors")).unwrap();
    let mut aq: Vec<[Option<ActQuant>; 4]> = vec![Default::default(); model.heads.len()];
    let amax = int8["amax"].as_object().unwrap();
    assert_eq!(amax.len(), 7, "the fixture quantizes seven matrices");
    for (key, a) in amax {
        let (l, kind) = key.split_once('.').map(|(l, k)| (l.parse::<usize>().unwrap(), k.parse::<usize>().unwrap())).unwrap();
        let a: Option<Vec<f32>> = serde_json::from_value(a.clone()).unwrap();
        let (ranges, rows, cols) = model.matrix_ranges(l, kind).unwrap();
        let w: Vec<f32> = ranges.iter().flat_map(|r| model.params.data[r.clone()].to_vec()).collect();
        let q = quantize_weights(&w, rows, cols, a.as_deref()).unwrap();
        assert_eq!(q.smooth.is_some(), a.is_some());
        let fake = fake_weights(&q);
        let mut off = 0;
        for r in ranges {
            let slot = model.params.slots.iter().find(|s| s.range == r).unwrap().clone();
            let want = weights.tensor_f32(&slot.name, Some(&slot.shape)).unwrap();
            let got = &fake[off..off + r.len()];
            // Bit for bit, but for the sign of zero (numpy keeps -0 where a weight rounds to 0).
            let same = got.iter().zip(&want).filter(|(a, b)| a.to_bits() == b.to_bits() || (**a == 0.0 && **b == 0.0)).count();
            assert_eq!(same, want.len(), "{}: {} of {} fake-quantized weights differ from numpy's", slot.name, want.len() - same, want.len());
            assert!(got.iter().zip(&model.params.data[r.clone()]).any(|(a, b)| a != b), "{}: quantization changed nothing", slot.name);
            model.params.data[r.clone()].copy_from_slice(got);
            off += r.len();
        }
        aq[l][kind] = Some(ActQuant { smooth: q.smooth.clone() });
    }
    model.act_quant = aq;
    let base = case("case.json");
    check_against(&model, &base, int8["loss"].as_f64().unwrap(), "int8_grads.safetensors");
    // Without the inputs' fake quantization the loss moves: the check above is not vacuous.
    let mut plain = model.clone();
    plain.act_quant.clear();
    let (loss, _) = loss_and_grads(&plain, &ThreadPool::new(1), &base);
    assert!((loss as f64 - int8["loss"].as_f64().unwrap()).abs() > 1e-4, "fake-quantized inputs did not change the loss ({loss})");
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
