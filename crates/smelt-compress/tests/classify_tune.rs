//! Encoder fine-tuning for classification (`smelt_compress::classify_tune`): the gradient of the
//! head-plus-encoder loss against central finite differences of the loss, on the tiny BERT of
//! smelt-models' fixtures (two layers, one with a pruned head), with only the last layer and the
//! head trained: the head's and the last layer's entries match the differences, the first
//! layer's and the embeddings' stay zero.

use smelt_compress::classify_tune::EncoderClassifier;
use smelt_kernels::pool::ThreadPool;
use smelt_models::backward::BertTrain;
use smelt_models::classify::Head;
use smelt_train::Objective;

#[test]
fn classifier_gradient_matches_finite_differences() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../smelt-models/tests/reference/bert_tiny");
    let model = BertTrain::from_dir(&dir).unwrap();
    let d = model.cfg.hidden_size;
    let c = 3;
    let mut s = 11u64;
    let mut rnd = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let head = Head { format: "smelt-classifier-head".into(), version: 1, encoder: "tiny".into(), int8: false, dim: d, labels: vec!["a".into(), "b".into(), "c".into()], weights: (0..c).map(|_| (0..d).map(|_| rnd()).collect()).collect(), bias: (0..c).map(|_| 0.1 * rnd()).collect(), l2: 0.01, train_examples: 0, iterations: 0, final_loss: 0.0 };
    let data = vec![(vec![1, 5, 9, 13, 2], 0), (vec![1, 30, 31, 7, 7, 22, 19, 3, 2], 2), (vec![1, 11, 2], 1), (vec![1, 4, 4, 8, 2], 2)];
    let pool = ThreadPool::new(2);
    let mut obj = EncoderClassifier::new(model, &head, data.clone(), vec![], 1, &pool).unwrap();
    let batch = [0, 1, 2, 3];
    let n = obj.params().len();
    let mut g = vec![0f32; n];
    obj.grad(&batch, &mut g).unwrap();
    let slots = obj.model.params.slots.clone();
    let (mut err2, mut ref2, mut checked) = (0f64, 0f64, 0);
    for slot in &slots {
        let trained = slot.name.starts_with("head.") || slot.name.contains("encoder.layer.1.");
        let got = &g[slot.range.clone()];
        if !trained {
            assert!(got.iter().all(|v| *v == 0.0), "{} is frozen but has a gradient", slot.name);
            continue;
        }
        for j in [0, slot.range.len() / 2, slot.range.len() - 1] {
            let at = slot.range.start + j;
            let old = obj.params()[at];
            let h = 1e-2f32;
            let loss_at = |v: f32, obj: &mut EncoderClassifier| {
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
    assert!(checked > 20 && ref2 > 0.0, "{checked} coordinates checked");
    assert!(rel < 1e-2, "relative error {rel:.3e} against finite differences over {checked} coordinates");
    // The encoder written back has no head tensors.
    assert!(obj.encoder().params.slots.iter().all(|s| !s.name.starts_with("head.")));
    assert_eq!(obj.encoder().params.len(), n - c * d - c);
}
