//! Structured column pruning (`prune::columns`, the OBS step for whole groups of input columns
//! with a bias absorbing their mean) against numpy (tests/reference/structured_reference.py,
//! which checks its greedy OBS updates against a direct least-squares refit) on real SmolLM2
//! matrices with the Hessians of their real inputs over Austen: FFN channels of `ffn_down`
//! (groups of one column) and a head group of `attn_output` (3 query heads of 64, one key/value
//! head). The same groups go in the same order, and the refitted weights and bias agree.
//!
//! A pruned encoder (all-MiniLM-L6-v2 without a layer, a quarter of its heads and FFN channels)
//! gives in smelt the hidden states a float64 numpy BERT computes from the written directory
//! (`smelt-models/tests/reference/bert_numpy.py`, which reads `pruned_heads` and the widths).
//!
//! Needs `python3` with numpy (scripts/test installs it; `SMELT_PYTHON` overrides).

use std::process::Command;

mod common;
use common::save;

use smelt_compress::prune::columns::{remove_column_groups, with_bias_column, with_constant_input, ColumnGroups};
use smelt_formats::npy::{read_npy, NpyData};
use smelt_models::observe::MatrixInput;


#[test]
fn structured_pruning_matches_numpy() {
    let layer = 4;
    let common::Calibrated { file, pool, stats, .. } = common::calibrated([layer]);
    let dir = std::env::temp_dir().join(format!("smelt-structured-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/structured_reference.py");
    // (tensor, its input, columns per group, groups removed)
    for (tensor, input, group, n_remove) in [("ffn_down", MatrixInput::FfnDown, 1, 64), ("attn_output", MatrixInput::AttnOutput, 192, 1)] {
        let name = format!("blk.{layer}.{tensor}.weight");
        let t = file.tensor(&name).unwrap();
        let (rows, cols) = (t.n_rows() as usize, t.row_len() as usize);
        let w = file.tensor_f32(t).unwrap();
        let st = &stats[&(layer, input)];
        let h = st.hessian.as_ref().unwrap();
        let p = |s: &str| dir.join(format!("{tensor}-{s}.npy"));
        save(&p("w"), vec![rows, cols], NpyData::F32(w.clone()));
        save(&p("h"), vec![cols, cols], NpyData::F64(h.clone()));
        save(&p("sum"), vec![cols], NpyData::F64(st.sum.clone()));
        let out = Command::new(&python)
            .arg(script)
            .args([p("w"), p("h"), p("sum")])
            .args([st.rows.to_string(), group.to_string(), n_remove.to_string()])
            .args([p("out"), p("order")])
            .output()
            .expect("python3 with numpy");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let want = match read_npy(&std::fs::read(p("out")).unwrap()).unwrap().data {
            NpyData::F64(v) => v,
            other => panic!("{other:?}"),
        };
        let want_order = match read_npy(&std::fs::read(p("order")).unwrap()).unwrap().data {
            NpyData::I64(v) => v,
            other => panic!("{other:?}"),
        };

        let c1 = cols + 1;
        let h1 = with_constant_input(h, &st.sum, st.rows, cols);
        let mut w1 = with_bias_column(&w, rows, cols, None);
        let spec = ColumnGroups { group, n_groups: cols / group, n_remove, damp: 0.01 };
        let removed = remove_column_groups(&pool, &mut w1, rows, c1, &h1, spec).unwrap();
        let order: Vec<i64> = removed.iter().map(|r| r.group as i64).collect();
        assert_eq!(order, want_order, "{tensor}: the groups removed, in order");
        let scale = want.iter().fold(0f64, |a, &b| a.max(b.abs()));
        let worst = w1.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0f64, f64::max);
        assert!(worst <= 2e-3 * scale, "{tensor}: refitted weights differ by {worst} (largest {scale})");
        let bias_moved = (0..rows).map(|r| w1[r * c1 + cols].abs()).fold(0f32, f32::max);
        assert!(bias_moved > 0.0, "{tensor}: the bias absorbed nothing");
        for g in &order {
            let g = *g as usize;
            assert!((0..rows).all(|r| (g * group..(g + 1) * group).all(|j| w1[r * c1 + j] == 0.0)), "{tensor}: group {g} is not zero");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A pruned all-MiniLM-L6-v2 (one layer, 3 of 12 heads and a quarter of the FFN channels of the
/// rest removed, calibrated on Austen) is a BERT directory that smelt runs exactly as numpy does,
/// and whose embeddings stay close to the original's.
#[test]
fn pruned_encoder_matches_numpy() {
    use smelt_compress::prune::encoder::{prune_encoder, EncoderPrune};
    use smelt_compress::prune::layers::LayerScore;
    use smelt_kernels::pool::ThreadPool;
    let src = smelt_assets::ensure("all-minilm-l6-v2").unwrap();
    let enc = smelt_models::Encoder::load(&src, None).unwrap();
    let pool = ThreadPool::new(2);
    let austen = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/austen/emma.txt")).expect("../shared beside the repository");
    let flat = austen[..80_000].split_whitespace().collect::<Vec<_>>().join(" ");
    let sentences: Vec<&str> = flat.split_inclusive(['.', '?', '!']).map(str::trim).filter(|s| s.split(' ').count() >= 4).take(256).collect();
    let dir = std::env::temp_dir().join(format!("smelt-encoder-numpy-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("pruned");
    let p = EncoderPrune { ffn: 0.25, heads: 0.25, layers: 1, layer_score: LayerScore::Influence, damp: 0.01, bias: true, batch: 32 };
    let r = prune_encoder(&src, &enc, &sentences, &p, &out, &pool, &mut |_, _, _| {}).unwrap();
    assert_eq!((r.removed_layers.len(), r.heads_after.clone(), r.ffn_after), (1, vec![9; 5], 1152));
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 5);
    let pruned_heads = cfg["pruned_heads"].as_object().unwrap();
    assert_eq!(pruned_heads.len(), 5);
    assert!(pruned_heads.values().all(|v| v.as_array().unwrap().len() == 3), "{pruned_heads:?}");

    let pruned = smelt_models::Encoder::load(&out, None).unwrap();
    assert_eq!(pruned.model.layers.iter().map(|l| l.heads).collect::<Vec<_>>(), vec![9; 5]);
    let texts = ["A man is playing a guitar.", "The weather in the mountains was cold and wet all week, and nobody minded.", "Stock markets fell sharply on Monday."];
    let seqs: Vec<Vec<u32>> = texts.iter().map(|t| pruned.tok.encode(t, pruned.max_len)).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let got = pruned.model.forward(&pool, &refs, &mut Default::default()).unwrap();
    let ids = dir.join("ids.json");
    std::fs::write(&ids, serde_json::to_string(&seqs).unwrap()).unwrap();
    let want_path = dir.join("hidden.npy");
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../smelt-models/tests/reference/bert_numpy.py");
    let st = Command::new(&python).arg(script).arg(&out).arg(&ids).arg(&want_path).status().unwrap();
    assert!(st.success(), "{python} {script} failed (it needs numpy: scripts/test installs it)");
    let want = read_npy(&std::fs::read(&want_path).unwrap()).unwrap().data.to_f32();
    assert_eq!(got.len(), want.len());
    let max_err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("pruned encoder: removed layer {:?}, max |hidden state error| against numpy {max_err}", r.removed_layers);
    assert!(max_err <= 1e-4, "max |hidden state error| {max_err}");

    // Close to the original: the refits keep the embeddings' direction.
    let (a, b) = (enc.embed(&pool, &texts, &Default::default()).unwrap(), pruned.embed(&pool, &texts, &Default::default()).unwrap());
    for (x, y) in a.iter().zip(&b) {
        let cos = x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>() / (x.iter().map(|p| p * p).sum::<f32>().sqrt() * y.iter().map(|q| q * q).sum::<f32>().sqrt());
        eprintln!("cosine to the original {cos}");
        // Unrelated sentences lie near 0 in this model; 0.72 to 0.86 measured when written.
        assert!(cos > 0.6, "cosine to the original {cos}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
