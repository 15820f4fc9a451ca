//! Quantization-aware training at small size on the real SmolLM2-135M (blocks 0 and 29 of the
//! shipped file, so that a step takes well under a second):
//! - the straight-through gradient is the model's gradient at the quantized point: the QAT
//!   objective's gradient equals plain distillation's on a student loaded from the
//!   round-to-nearest Q4_0 file `smelt quantize` writes (another path: the file, the loader's
//!   dequantizer, the training copy);
//! - a few steps lower the quantized model's KL to the original on held-out text;
//! - the file written holds exactly the trained quantized weights: loaded by the inference
//!   model, it gives the training forward's logits, in Q4_0, and differs from round-to-nearest.

use std::collections::BTreeSet;
use std::sync::Arc;

use smelt_compress::distill::decoder::{chunks, DecoderDistill, DecoderLoss};
use smelt_compress::prune::layers::write_without_layers;
use smelt_compress::qat::Qat;
use smelt_compress::{plan, quantize_file, Calib, QuantizeConfig};
use smelt_formats::{GgmlType, GgufFile};
use smelt_kernels::pool::ThreadPool;
use smelt_models::attention::KvType;
use smelt_models::backward::LlamaTrain;
use smelt_models::{Llama, LoadOptions};
use smelt_train::{Objective, TrainConfig, Trainer};

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0f32, |m, v| m.max(v.abs()))
}

#[test]
fn qat_trains_at_the_quantized_point_and_writes_what_it_trained() {
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let pool = ThreadPool::new(2);
    let dir = std::env::temp_dir().join(format!("smelt-qat-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let src = GgufFile::open(&path).unwrap();
    let small = dir.join("two-blocks.gguf");
    write_without_layers(&src, &(1..29).collect::<BTreeSet<usize>>(), &small).unwrap();
    let file = Arc::new(GgufFile::open(&small).unwrap());
    let original = Llama::from_gguf(file.clone(), LoadOptions { weight_type: Some(GgmlType::F32) }).unwrap();
    let tok = smelt_models::load(&path, LoadOptions::default()).unwrap().tok;
    let austen = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/austen/persuasion.txt")).expect("../shared beside the repository");
    let tokens = tok.encode(&austen[..40_000], false);
    let (train, val) = chunks(&tokens, 32, 2);
    let train = train[..24].to_vec();
    let plans = plan(&file, &QuantizeConfig::new(GgmlType::Q4_0)).unwrap();
    let distill = |student: LlamaTrain| DecoderDistill::new(&original, student, train.clone(), val.clone(), DecoderLoss::default(), &pool).unwrap();
    let mut qat = Qat::new(distill(LlamaTrain::from_llama(&original).unwrap()), &plans, None, &pool).unwrap();
    assert_eq!(qat.fake.len(), 2 * 7 + 1, "every block matrix and the tied embedding");

    // The gradient at the quantized point: against a student loaded from the RTN file.
    let rtn = dir.join("rtn.gguf");
    quantize_file(&file, &plans, GgmlType::Q4_0, &Calib::default(), &rtn, &pool, &mut |_| {}).unwrap();
    let rtn_model = Llama::open(&rtn, LoadOptions::default()).unwrap();
    assert_eq!(rtn_model.layers[0].wq.ty, GgmlType::Q4_0);
    let mut plain = distill(LlamaTrain::from_llama(&rtn_model).unwrap());
    let n = qat.params().len();
    let (mut g_qat, mut g_rtn) = (vec![0f32; n], vec![0f32; n]);
    let s1 = qat.grad(&[0, 1], &mut g_qat).unwrap();
    let s2 = plain.grad(&[0, 1], &mut g_rtn).unwrap();
    assert!((s1.loss - s2.loss).abs() < 1e-4 * s2.loss.abs().max(1e-3), "loss {} vs {}", s1.loss, s2.loss);
    let diff: Vec<f32> = g_qat.iter().zip(&g_rtn).map(|(a, b)| a - b).collect();
    assert!(max_abs(&g_rtn) > 0.0);
    assert!(max_abs(&diff) < 1e-3 * max_abs(&g_rtn), "straight-through gradient differs from the gradient at the RTN weights: {} of {}", max_abs(&diff), max_abs(&g_rtn));
    // ... and not the gradient at the unquantized weights.
    let mut full = distill(LlamaTrain::from_llama(&original).unwrap());
    let mut g_full = vec![0f32; n];
    full.grad(&[0, 1], &mut g_full).unwrap();
    let d_full: Vec<f32> = g_qat.iter().zip(&g_full).map(|(a, b)| a - b).collect();
    assert!(max_abs(&d_full) > 1e-2 * max_abs(&g_full), "the quantization changed nothing in the gradient");

    // Training lowers the quantized model's KL to the original on held-out chunks.
    let before = qat.val_kl().unwrap();
    let cfg = TrainConfig { steps: 8, batch: 2, accumulate: 1, lr: 2e-4, warmup: 1, min_lr_ratio: 0.1, weight_decay: 0.0, clip: 1.0, seed: 1, eval_every: 0, patience: 0, checkpoint_every: 0, checkpoint: None, resume: false, threads: 2, max_seconds: None };
    Trainer { cfg, log: None, stop: None }.run(&mut qat, &mut |_| {}).unwrap();
    let after = qat.val_kl().unwrap();
    eprintln!("validation KL of the Q4_0 model to the original: {before:.4} (round-to-nearest) -> {after:.4} (QAT)");
    assert!(after < 0.9 * before, "QAT did not help: KL {before} -> {after}");

    // The written file: Q4_0, other bytes than RTN, the training forward's logits.
    let out = dir.join("qat.gguf");
    let summary = qat.write(&file, &plans, GgmlType::Q4_0, None, &out, &mut |_| {}).unwrap();
    assert_eq!(summary.file_bytes, std::fs::metadata(&rtn).unwrap().len());
    let written = Llama::open(&out, LoadOptions::default()).unwrap();
    assert_eq!((written.layers[1].down.ty, written.embed.ty), (GgmlType::Q4_0, GgmlType::Q4_0));
    assert_ne!(std::fs::read(&out).unwrap(), std::fs::read(&rtn).unwrap(), "the trained file is the RTN file");
    let probe = &tokens[..16];
    let mut sess = written.session_with(16, KvType::F32);
    let got = written.forward(&pool, &mut sess, probe, true).unwrap().to_vec();
    qat.refresh().unwrap();
    let want = qat.inner.student.forward(&pool, &[probe]).unwrap().logits;
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("written QAT model: max |logit difference| to the training forward {err}");
    assert!(err < 2e-3 * max_abs(&want).max(1.0), "max |logit difference| {err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The fake quantization QAT trains through ([`smelt_compress::round_trip`]) is, for every type
/// smelt can write, the registry's quantizer followed by its dequantizer, bit for bit (the
/// registry's quantizers are checked against the `gguf` package and llama.cpp in
/// smelt-formats), on a real matrix of SmolLM2 (layer 0's FFN
/// down projection, 576 x 1536: whole blocks of every type).
#[test]
fn fake_quantization_is_the_registry_round_trip_for_every_type() {
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let file = GgufFile::open(&path).unwrap();
    let t = file.tensors().iter().find(|t| t.name == "blk.0.ffn_down.weight").unwrap().clone();
    let cols = t.row_len() as usize;
    let mut w = vec![0f32; (t.n_rows() as usize) * cols];
    smelt_formats::quant::dequantize(t.ty, file.tensor_data(&t), &mut w).unwrap();
    let pool = ThreadPool::new(2);
    let mut types = 0;
    for ty in GgmlType::weight_targets() {
        let bytes = ty.bytes_for(w.len() as u64).unwrap();
        let (_, fake) = smelt_compress::round_trip(&pool, &t.name, &w, cols, ty, None).unwrap();
        let mut q = vec![0u8; bytes as usize];
        smelt_formats::quant::quantize(ty, &w, &mut q).unwrap();
        let mut back = vec![0f32; w.len()];
        smelt_formats::quant::dequantize(ty, &q, &mut back).unwrap();
        let same = fake.iter().zip(&back).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
        assert_eq!(same, w.len(), "{ty}: {} of {} values differ from the registry's round trip", w.len() - same, w.len());
        types += 1;
    }
    let all: Vec<GgmlType> = GgmlType::weight_targets().collect();
    assert_eq!(types, all.len(), "not every type was checked: {all:?}");
}
