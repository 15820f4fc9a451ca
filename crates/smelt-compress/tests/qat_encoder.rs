//! Quantization-aware training of all-MiniLM-L6-v2 for the int8 path
//! (`smelt_compress::qat_encoder`), checked against the inference model's own int8 path (integer
//! kernels, quantized at load time): the training forward's sentence vectors are the int8
//! path's, and a few steps bring the written directory, loaded with int8, closer to the original
//! on held-out sentences than post-training quantization, as the inference path measures it.
//! (The gradients are checked against numpy in smelt-models' `bert_grad_vs_numpy`.)

use smelt_compress::distill::encoder::{EncoderDistill, EncoderLoss};
use smelt_compress::distill::write_encoder_student;
use smelt_compress::qat_encoder::EncoderQat;
use smelt_kernels::pool::ThreadPool;
use smelt_models::backward::{mean_pool_normalize, BertTrain};
use smelt_models::int8::DEFAULT_CALIBRATION;
use smelt_models::{Encoder, Int8Spec};
use smelt_train::{TrainConfig, Trainer};

fn sentences(enc: &Encoder) -> Vec<Vec<u32>> {
    let austen = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/austen/persuasion.txt")).expect("../shared beside the repository");
    smelt_formats::texts::sentences(&austen, 160).iter().map(|t| enc.tok.encode(t, 40)).collect()
}

/// Mean-pooled, normalized vectors of `seqs` from the training forward.
fn train_vectors(m: &BertTrain, pool: &ThreadPool, seqs: &[Vec<u32>]) -> Vec<f32> {
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let acts = m.forward(pool, &refs).unwrap();
    let d = m.cfg.hidden_size;
    let mut e = vec![0f32; seqs.len() * d];
    mean_pool_normalize(&acts.out, &acts.starts, d, &mut e);
    e
}

/// The same from the inference model.
fn vectors(enc: &Encoder, pool: &ThreadPool, seqs: &[Vec<u32>]) -> Vec<f32> {
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let h = enc.model.forward(pool, &refs, &mut Default::default()).unwrap();
    let d = enc.dim();
    let mut starts = vec![0];
    for s in seqs {
        starts.push(starts[starts.len() - 1] + s.len());
    }
    let mut e = vec![0f32; seqs.len() * d];
    mean_pool_normalize(&h, &starts, d, &mut e);
    e
}

/// Mean `1 - cos` between rows of unit vectors.
fn gap(a: &[f32], b: &[f32], d: usize) -> f64 {
    let n = a.len() / d;
    a.chunks_exact(d).zip(b.chunks_exact(d)).map(|(x, y)| 1.0 - x.iter().zip(y).map(|(p, q)| (p * q) as f64).sum::<f64>()).sum::<f64>() / n as f64
}

fn int8(dir: &std::path::Path, pool: &ThreadPool) -> Encoder {
    let mut e = Encoder::load(dir, None).unwrap();
    assert_eq!(e.quantize_int8(pool, &Int8Spec::all(), None).unwrap(), 24);
    e
}

/// The objective over `train`/`val` for the matrices `spec` selects.
fn objective<'a>(src: &std::path::Path, teacher: &'a Encoder, pool: &'a ThreadPool, (train, val): (&[Vec<u32>], &[Vec<u32>]), spec: &Int8Spec) -> EncoderQat<'a> {
    let calib: Vec<Vec<u32>> = DEFAULT_CALIBRATION.iter().map(|t| teacher.tok.encode(t, teacher.max_len)).collect();
    let inner = EncoderDistill::new(teacher, BertTrain::from_dir(src).unwrap(), train.to_vec(), val.to_vec(), EncoderLoss::default(), pool, &mut |_, _| {}).unwrap();
    EncoderQat::new(inner, spec, calib, pool).unwrap()
}

#[test]
fn int8_qat_trains_the_model_the_int8_path_runs() {
    let src = smelt_assets::ensure("all-minilm-l6-v2").unwrap();
    let teacher = Encoder::load(&src, None).unwrap();
    let pool = ThreadPool::new(2);
    let data = sentences(&teacher);
    let (train, val) = data.split_at(data.len() - 32);
    let d = teacher.dim();
    let f32_vectors = vectors(&teacher, &pool, val);

    // The fake-quantized forward is the int8 path's model (the same calibration, smoothing and
    // quantizers), not the f32 one. One layer is checked: over several, f32 rounding differences
    // between the integer kernels and the f32 products flip a few activation codes, and each
    // flip moves the next layers' inputs enough to redraw their rounding, so deeper comparisons
    // measure two draws of the same noise, not the quantizer.
    let first: Int8Spec = "0".parse().unwrap();
    let one = objective(&src, &teacher, &pool, (train, val), &first);
    assert_eq!(one.quantized.len(), 4);
    let mut e = Encoder::load(&src, None).unwrap();
    assert_eq!(e.quantize_int8(&pool, &first, None).unwrap(), 4);
    let path = vectors(&e, &pool, val);
    let sim = train_vectors(&one.inner.student, &pool, val);
    let (to_path, path_gap) = (gap(&sim, &path, d), gap(&path, &f32_vectors, d));
    eprintln!("layer 0 in int8: the fake-quantized forward is 1 - cos {to_path:.2e} from the int8 path, which is {path_gap:.2e} from f32");
    assert!(path_gap > 1e-5, "layer 0 in int8 is indistinguishable from f32 ({path_gap:.2e}): the check is empty");
    assert!(to_path < 0.01 * path_gap, "the fake-quantized forward is not the int8 path's: 1 - cos {to_path:.2e} to it, {path_gap:.2e} between the int8 path and f32");
    drop(one);

    // Every matrix in int8: train, write the master weights, load them with int8.
    let mut obj = objective(&src, &teacher, &pool, (train, val), &Int8Spec::all());
    assert_eq!(obj.quantized.len(), 24);
    let ptq_gap = gap(&vectors(&int8(&src, &pool), &pool, val), &f32_vectors, d);
    let before = obj.val_gap().unwrap();
    // lr 1e-5 (5e-5 overshoots: the gap to remove is about 1e-3).
    let cfg = TrainConfig { steps: 16, batch: 16, accumulate: 1, lr: 1e-5, warmup: 2, min_lr_ratio: 0.1, weight_decay: 0.0, clip: 1.0, seed: 3, eval_every: 0, patience: 0, checkpoint_every: 0, checkpoint: None, resume: false, threads: 2, max_seconds: None };
    Trainer { cfg, log: None, stop: None }.run(&mut obj, &mut |_| {}).unwrap();
    let after = obj.val_gap().unwrap();
    let dir = std::env::temp_dir().join(format!("smelt-qat-encoder-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    write_encoder_student(&obj.master_model(), &src, &dir).unwrap();
    let qat_gap = gap(&vectors(&int8(&dir, &pool), &pool, val), &f32_vectors, d);
    eprintln!("held-out 1 - cos to f32 under the int8 path: post-training {ptq_gap:.3e}, after QAT {qat_gap:.3e} (training forward {before:.3e} -> {after:.3e})");
    assert!(after < 0.8 * before, "the training forward did not learn: {before:.3e} -> {after:.3e}");
    assert!(qat_gap < 0.8 * ptq_gap, "QAT did not bring the int8 model closer to the original: {ptq_gap:.3e} -> {qat_gap:.3e}");
    std::fs::remove_dir_all(&dir).ok();
}
