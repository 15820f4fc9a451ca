//! Encoder distillation at small size, on the real all-MiniLM-L6-v2 and Austen sentences: a
//! two-layer student learns (the validation gap to the teacher shrinks), the written directory is
//! a BERT that smelt runs exactly as an independent numpy BERT does
//! (`smelt-models/tests/reference/bert_numpy.py`), and a run stopped mid-epoch and resumed from
//! its checkpoint ends with the same weights, bit for bit, as one that was not stopped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use smelt_compress::distill::encoder::{EncoderDistill, EncoderLoss};
use smelt_compress::distill::write_encoder_student;
use smelt_formats::npy::read_npy;
use smelt_kernels::pool::ThreadPool;
use smelt_models::backward::BertTrain;
use smelt_models::Encoder;
use smelt_train::{Stop, TrainConfig, Trainer};

fn sentences(n: usize, max_len: usize, enc: &Encoder) -> Vec<Vec<u32>> {
    let austen = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/austen/persuasion.txt")).expect("../shared beside the repository");
    smelt_formats::texts::sentences(&austen, n).iter().map(|t| enc.tok.encode(t, max_len)).collect()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smelt-distill-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(steps: u64, checkpoint: Option<PathBuf>) -> TrainConfig {
    TrainConfig { steps, batch: 8, accumulate: 2, lr: 3e-4, warmup: 2, min_lr_ratio: 0.1, weight_decay: 0.01, clip: 1.0, seed: 5, eval_every: 0, patience: 0, checkpoint_every: 4, checkpoint, resume: false, threads: 2, max_seconds: None }
}

/// A two-layer student (teacher layers 0 and 3) with the cosine loss and a hidden-state term.
fn objective<'a>(src: &Path, teacher: &'a Encoder, pool: &'a ThreadPool, data: &[Vec<u32>]) -> EncoderDistill<'a> {
    let student = BertTrain::from_dir(src).unwrap().keep_layers(&[0, 3]).unwrap();
    let loss = EncoderLoss { cos: 1.0, mse: 0.0, hidden: 0.5, layer_map: vec![(0, 0), (1, 3)] };
    let (train, val) = data.split_at(data.len() - 24);
    EncoderDistill::new(teacher, student, train.to_vec(), val.to_vec(), loss, pool, &mut |_, _| {}).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn a_distilled_student_learns_and_is_written_as_numpy_reads_it() {
    let src = smelt_assets::ensure("all-minilm-l6-v2").unwrap();
    let teacher = Encoder::load(&src, None).unwrap();
    let pool = ThreadPool::new(2);
    let data = sentences(120, 48, &teacher);
    let mut obj = objective(&src, &teacher, &pool, &data);
    let before = obj.val_gap().unwrap();
    let mut t = Trainer { cfg: config(16, None), log: None, stop: None };
    let out = t.run(&mut obj, &mut |_| {}).unwrap();
    let after = obj.val_gap().unwrap();
    eprintln!("validation gap (1 - cos to the teacher) {before:.4} -> {after:.4}, last loss {:.4}", out.last_loss);
    assert!(after < 0.8 * before, "the student did not learn: gap {before} -> {after}");

    // The written directory: a two-layer BERT with the pooler kept, that smelt and numpy run alike.
    let dir = scratch("written");
    let student_dir = dir.join("student");
    write_encoder_student(&obj.student, &src, &student_dir).unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(student_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 2);
    assert!(student_dir.join("tokenizer.json").exists() && student_dir.join("1_Pooling/config.json").exists());
    let loaded = Encoder::load(&student_dir, None).unwrap();
    let seqs = &data[..3];
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let got = loaded.model.forward(&pool, &refs, &mut Default::default()).unwrap();
    // The inference model of the written files runs what the training forward ran.
    let trained = obj.student.forward(&pool, &refs).unwrap().out;
    let drift = got.iter().zip(&trained).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(drift <= 1e-4, "inference and training forward differ by {drift}");
    let ids = dir.join("ids.json");
    std::fs::write(&ids, serde_json::to_string(seqs).unwrap()).unwrap();
    let want_path = dir.join("hidden.npy");
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../smelt-models/tests/reference/bert_numpy.py");
    let st = Command::new(&python).arg(script).arg(&student_dir).arg(&ids).arg(&want_path).status().unwrap();
    assert!(st.success(), "{python} {script} failed (it needs numpy: scripts/test installs it)");
    let want = read_npy(&std::fs::read(&want_path).unwrap()).unwrap().data.to_f32();
    assert_eq!(got.len(), want.len());
    let max_err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("distilled student: max |hidden state error| against numpy {max_err}");
    assert!(max_err <= 1e-4, "max |hidden state error| {max_err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_stopped_run_resumes_to_the_same_weights() {
    let src = smelt_assets::ensure("all-minilm-l6-v2").unwrap();
    let teacher = Encoder::load(&src, None).unwrap();
    let pool = ThreadPool::new(2);
    let data = sentences(80, 32, &teacher);
    let dir = scratch("resume");

    // 56 training sentences, 16 a step: the stop at step 5 falls inside the second epoch.
    let mut whole = objective(&src, &teacher, &pool, &data);
    Trainer { cfg: config(10, Some(dir.join("whole.ckpt"))), log: None, stop: None }.run(&mut whole, &mut |_| {}).unwrap();

    let flag = AtomicBool::new(false);
    let mut part = objective(&src, &teacher, &pool, &data);
    let cfg = config(10, Some(dir.join("part.ckpt")));
    let out = Trainer { cfg: cfg.clone(), log: None, stop: Some(&flag) }
        .run(&mut part, &mut |p| {
            if p.step == 5 {
                flag.store(true, Ordering::Relaxed);
            }
        })
        .unwrap();
    assert_eq!((out.stop, out.steps), (Stop::Interrupted, 5));
    assert_ne!(bits(&part.student.params.data), bits(&whole.student.params.data));

    let mut resumed = objective(&src, &teacher, &pool, &data);
    let out = Trainer { cfg: TrainConfig { resume: true, ..cfg }, log: None, stop: None }.run(&mut resumed, &mut |_| {}).unwrap();
    assert_eq!((out.stop, out.steps), (Stop::Finished, 10));
    assert!(bits(&resumed.student.params.data) == bits(&whole.student.params.data), "resumed weights differ from the uninterrupted run's");
    std::fs::remove_dir_all(&dir).ok();
}
