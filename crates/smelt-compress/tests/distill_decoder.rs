//! Decoder distillation at small size on the real SmolLM2-135M: a student of four of its blocks
//! learns the full model's next-token distributions on Austen (the validation KL divergence
//! falls), and the GGUF written from it runs in smelt's inference model as it ran in training.

use std::collections::BTreeSet;
use std::sync::Arc;

use smelt_compress::distill::decoder::{chunks, DecoderDistill, DecoderLoss};
use smelt_compress::distill::write_decoder_student;
use smelt_compress::prune::layers::write_without_layers;
use smelt_formats::{GgmlType, GgufFile};
use smelt_kernels::pool::ThreadPool;
use smelt_models::attention::KvType;
use smelt_models::backward::LlamaTrain;
use smelt_models::{Llama, LoadOptions};
use smelt_train::{TrainConfig, Trainer};

#[test]
fn a_layer_dropped_decoder_learns_from_the_full_one_and_is_written_as_gguf() {
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let loaded = smelt_models::load(&path, LoadOptions { weight_type: Some(GgmlType::F32) }).unwrap();
    let teacher = &loaded.model;
    let pool = ThreadPool::new(2);
    let dir = std::env::temp_dir().join(format!("smelt-distill-decoder-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    // The student: blocks 0, 1, 28 and 29 of the shipped file.
    let src = GgufFile::open(&path).unwrap();
    let removed: BTreeSet<usize> = (2..28).collect();
    let student_src = dir.join("student-src.gguf");
    write_without_layers(&src, &removed, &student_src).unwrap();
    let student_file = Arc::new(GgufFile::open(&student_src).unwrap());
    let student = LlamaTrain::from_llama(&Llama::from_gguf(student_file.clone(), LoadOptions::default()).unwrap()).unwrap();
    assert_eq!(student.cfg.n_layers, 4);

    let austen = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/austen/persuasion.txt")).expect("../shared beside the repository");
    let tokens = loaded.tok.encode(&austen[..60_000], false);
    let (train, val) = chunks(&tokens, 32, 2);
    let train = train[..40].to_vec();
    let mut obj = DecoderDistill::new(teacher, student, train, val, DecoderLoss { kl: 1.0, temperature: 2.0, ce: 0.2 }, &pool).unwrap();
    let before = obj.val_kl().unwrap();
    let cfg = TrainConfig { steps: 10, batch: 2, accumulate: 1, lr: 5e-4, warmup: 1, min_lr_ratio: 0.1, weight_decay: 0.0, clip: 1.0, seed: 1, eval_every: 0, patience: 0, checkpoint_every: 0, checkpoint: None, resume: false, threads: 2, max_seconds: None };
    Trainer { cfg, log: None, stop: None }.run(&mut obj, &mut |_| {}).unwrap();
    let after = obj.val_kl().unwrap();
    eprintln!("validation KL to the teacher {before:.4} -> {after:.4}");
    assert!(after < 0.9 * before, "the student did not learn: KL {before} -> {after}");

    // Written as GGUF (F32), loaded by the inference model: the same logits as in training.
    let out = dir.join("student.gguf");
    write_decoder_student(&obj.student, &student_file, &out).unwrap();
    let written = Llama::open(&out, LoadOptions::default()).unwrap();
    assert_eq!((written.cfg.n_layers, written.layers[0].wq.ty), (4, GgmlType::F32));
    let probe = &tokens[..16];
    let mut sess = written.session_with(16, KvType::F32);
    let got = written.forward(&pool, &mut sess, probe, true).unwrap().to_vec();
    let want = obj.student.forward(&pool, &[probe]).unwrap().logits;
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("written student: max |logit difference| to the training forward {err}");
    assert!(err < 1e-3, "max |logit difference| {err}");
    std::fs::remove_dir_all(&dir).ok();
}
