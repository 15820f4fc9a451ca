//! Contrastive fine-tuning with in-batch negatives (`smelt_compress::contrastive`): the gradient
//! of MultipleNegativesRankingLoss through the whole tiny BERT of smelt-models' fixtures against
//! central finite differences of the loss (with and without hard negatives), the loss of a batch
//! against its definition written out on the model's own embeddings, and a few steps making the
//! held-out retrieval no worse and the training loss lower.

use smelt_compress::contrastive::{batch_loss, Contrastive, Pair};
use smelt_kernels::pool::ThreadPool;
use smelt_models::backward::BertTrain;
use smelt_train::{Objective, TrainConfig, Trainer};

fn tiny() -> BertTrain {
    BertTrain::from_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../smelt-models/tests/reference/bert_tiny")).unwrap()
}

fn pairs(hard: bool) -> Vec<Pair> {
    let p = |a: &[u32], b: &[u32], n: &[u32]| Pair { anchor: a.to_vec(), positive: b.to_vec(), negative: hard.then(|| n.to_vec()) };
    vec![
        p(&[1, 5, 9, 13, 2], &[1, 5, 9, 2], &[1, 30, 2]),
        p(&[1, 30, 31, 7, 7, 22, 19, 3, 2], &[1, 31, 7, 22, 2], &[1, 11, 12, 2]),
        p(&[1, 11, 2], &[1, 11, 12, 2], &[1, 5, 9, 13, 2]),
        p(&[1, 4, 4, 8, 2], &[1, 4, 8, 2], &[1, 31, 7, 2]),
    ]
}

#[test]
fn in_batch_negatives_gradient_matches_finite_differences() {
    let pool = ThreadPool::new(2);
    for hard in [false, true] {
        let mut obj = Contrastive::new(tiny(), pairs(hard), vec![], 20.0, &pool).unwrap();
        let batch = [0, 1, 2, 3];
        let n = obj.params().len();
        let mut g = vec![0f32; n];
        let loss = obj.grad(&batch, &mut g).unwrap().loss;
        assert!(loss > 0.0 && loss.is_finite());
        let slots = obj.model.params.slots.clone();
        let (mut err2, mut ref2, mut checked) = (0f64, 0f64, 0);
        for slot in &slots {
            for j in [0, slot.range.len() / 3, slot.range.len() - 1] {
                let at = slot.range.start + j;
                let old = obj.params()[at];
                let h = 1e-2f32;
                let loss_at = |v: f32, obj: &mut Contrastive| {
                    obj.params_mut()[at] = v;
                    let mut scratch = vec![0f32; n];
                    obj.grad(&batch, &mut scratch).unwrap().loss
                };
                let (up, down) = (loss_at(old + h, &mut obj), loss_at(old - h, &mut obj));
                obj.params_mut()[at] = old;
                let fd = (up - down) / (2.0 * h as f64);
                err2 += (fd - g[at] as f64).powi(2);
                ref2 += fd * fd;
                checked += 1;
            }
        }
        let rel = (err2 / ref2).sqrt();
        assert!(checked > 40 && ref2 > 0.0, "{checked} coordinates checked");
        assert!(rel < 1e-2, "hard negatives {hard}: relative error {rel:.3e} against finite differences over {checked} coordinates");
    }
}

#[test]
fn the_loss_is_cross_entropy_over_scaled_cosines_and_training_lowers_it() {
    let pool = ThreadPool::new(2);
    let data = pairs(true);
    let mut obj = Contrastive::new(tiny(), data.clone(), data.clone(), 20.0, &pool).unwrap();
    // The definition, in f64 on the model's embeddings (its forward is checked against
    // sentence-transformers elsewhere): mean_i -log softmax_j(20 cos(a_i, c_j))[i].
    let embed = |seq: &[u32]| -> Vec<f64> {
        let acts = obj.model.forward(&pool, &[seq]).unwrap();
        let d = obj.model.cfg.hidden_size;
        let mut mean = vec![0f64; d];
        for row in acts.out.chunks_exact(d) {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += *v as f64 / seq.len() as f64);
        }
        let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
        mean.iter().map(|v| v / norm).collect()
    };
    let cands: Vec<Vec<f64>> = data.iter().map(|p| embed(&p.positive)).chain(data.iter().map(|p| embed(p.negative.as_ref().unwrap()))).collect();
    let mut want = 0f64;
    for (i, p) in data.iter().enumerate() {
        let a = embed(&p.anchor);
        let s: Vec<f64> = cands.iter().map(|c| 20.0 * a.iter().zip(c).map(|(x, y)| x * y).sum::<f64>()).collect();
        let lse = s.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v));
        let lse = lse + s.iter().map(|v| (v - lse).exp()).sum::<f64>().ln();
        want += (lse - s[i]) / data.len() as f64;
    }
    let got = batch_loss(&obj, &data).unwrap();
    assert!((got - want).abs() < 1e-4 * want.max(1.0), "loss {got} vs the definition {want}");

    let cfg = TrainConfig { steps: 20, batch: 4, accumulate: 1, lr: 1e-2, warmup: 0, min_lr_ratio: 0.1, weight_decay: 0.0, clip: 1.0, seed: 1, eval_every: 0, patience: 0, checkpoint_every: 0, checkpoint: None, resume: false, threads: 2, max_seconds: None };
    Trainer { cfg, log: None, stop: None }.run(&mut obj, &mut |_| {}).unwrap();
    let after = batch_loss(&obj, &data).unwrap();
    assert!(after < 0.5 * got, "training did not lower the loss: {got} -> {after}");
    assert!(obj.accuracy(&data).unwrap() == 1.0, "after training every anchor finds its own positive");
    assert!(Contrastive::new(tiny(), data[..1].to_vec(), vec![], 20.0, &pool).is_err(), "one pair has no in-batch negative");
}
