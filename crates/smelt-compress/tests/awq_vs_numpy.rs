//! AWQ's scale search against numpy (tests/reference/awq_reference.py), on real SmolLM2
//! matrices with the Hessians of their real inputs over Austen: for three groups of one layer
//! (the output projection, whose scales are tied across the query heads that share a V head;
//! down; Q/K/V together) every grid point's output error agrees within 10^-5 and the same alpha
//! is chosen. Then the folding is checked as exact: two layers written in F32 with the scales
//! applied (norms, V's and up's rows divided, columns multiplied; the factors rounded to powers
//! of two so that f32 products are exact) give the logits of the same layers written unscaled.
//!
//! Needs `python3` with numpy (scripts/test installs it; `SMELT_PYTHON` overrides).

use std::process::Command;

mod common;
use common::save;

use smelt_compress::awq::{llama_groups, search, AwqOptions, Fold};
use smelt_compress::{plan, quantize_file, Calib, CompressError, QuantizeConfig};
use smelt_formats::npy::NpyData;
use smelt_formats::{GgmlType, GgufFile};
use smelt_models::LoadOptions;


#[test]
fn awq_search_matches_numpy_and_folding_is_exact() {
    let layers = [0usize, 4];
    let common::Calibrated { m, file, pool, stats, text } = common::calibrated(layers);
    let cfg = &m.model.cfg;
    let all = llama_groups(&cfg.shapes, cfg.head_dim);
    let weights = |name: &str| -> Result<Vec<f32>, CompressError> {
        let t = file.tensor(name).ok_or_else(|| CompressError::Fit(format!("no {name}")))?;
        Ok(file.tensor_f32(t).unwrap())
    };
    let q4_0 = |_: &str| Some(GgmlType::Q4_0);
    let dir = std::env::temp_dir().join(format!("smelt-awq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let grid = 10;
    let opts = AwqOptions { grid, weighted: false };
    for g in all.iter().filter(|g| g.layer == 4) {
        // One group at a time, so no row factors of another group are in play.
        let found = search(&pool, std::slice::from_ref(g), &stats, &weights, &q4_0, opts, &mut |_, _, _| {}).unwrap();
        let st = &stats[&(g.layer, g.input)];
        let w: Vec<f32> = g.matrices.iter().flat_map(|name| weights(name).unwrap()).collect();
        let rms: Vec<f64> = st.importance().iter().map(|&v| (v as f64).sqrt()).collect();
        let (tie, head_dim) = match &g.fold {
            Fold::Rows { tie, head_dim, .. } => (*tie, *head_dim),
            Fold::Norm(_) => (1, 1),
        };
        let (pw, ph, pa) = (dir.join("w.npy"), dir.join("h.npy"), dir.join("a.npy"));
        save(&pw, vec![w.len() / st.cols, st.cols], NpyData::F32(w));
        save(&ph, vec![st.cols, st.cols], NpyData::F64(st.hessian.clone().unwrap()));
        save(&pa, vec![st.cols], NpyData::F64(rms));
        let out = Command::new(&python).arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/awq_reference.py")).args([&pw, &ph, &pa]).args([grid, tie, head_dim].map(|v| v.to_string())).output().expect("run python3");
        assert!(out.status.success(), "awq_reference.py: {}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let numpy: Vec<f64> = r["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let ours = &found.groups[0].losses;
        eprintln!("{:?} layer {}: numpy {numpy:?}\n  smelt {ours:?}", g.input, g.layer);
        assert_eq!(ours.len(), grid);
        for (i, (a, b)) in ours.iter().zip(&numpy).enumerate() {
            assert!((a / b - 1.0).abs() < 1e-5, "{:?} alpha {i}/{grid}: smelt {a} vs numpy {b}", g.input);
        }
        let best = r["best"].as_u64().unwrap() as usize;
        assert_eq!(found.groups[0].alpha, (best > 0).then_some(best as f32 / grid as f32), "{:?}: chosen alpha", g.input);
        // Scaling must pay somewhere on real matrices; the identity is grid point 0.
        assert!(ours.iter().cloned().fold(f64::INFINITY, f64::min) <= ours[0]);
    }

    // Folding: the whole search on layers 0 and 4, written unquantized (F32), is the same model.
    let groups: Vec<_> = all.iter().filter(|g| layers.contains(&g.layer)).cloned().collect();
    let mut scaling = search(&pool, &groups, &stats, &weights, &q4_0, AwqOptions { grid: 5, weighted: true }, &mut |_, _, _| {}).unwrap();
    assert!(scaling.groups.iter().any(|g| g.alpha.is_some()), "no group was scaled: {:?}", scaling.groups);
    // Every factor rounded to a power of two: then every product with it is exact in f32, and
    // a correct folding gives the plain model's logits to the last bit or nearly (rounding to
    // nearest would otherwise leave differences that grow through the layers).
    for f in scaling.factors.values_mut() {
        for v in f.cols.iter_mut().chain(f.rows.iter_mut()).flatten() {
            *v = v.log2().round().exp2();
        }
    }
    // Layers 0 and 4 in F32, the rest as they are, with and without the scales.
    let mut plans = plan(&file, &QuantizeConfig { to: GgmlType::F32, embed_type: None, output_type: None, keep: Vec::new() }).unwrap();
    for p in &mut plans {
        if !(p.t.name.starts_with("blk.0.") || p.t.name.starts_with("blk.4.")) {
            p.target = p.t.ty;
        }
    }
    let write = |name: &str, scaling: Option<&smelt_compress::awq::Scaling>| {
        let out = dir.join(name);
        quantize_file(&file, &plans, GgmlType::F32, &Calib { scaling, ..Default::default() }, &out, &pool, &mut |_| {}).unwrap();
        out
    };
    let (plain, folded) = (write("plain.gguf", None), write("folded.gguf", Some(&scaling)));
    // The scaled tensors really differ from the input.
    let sf = GgufFile::open(&folded).unwrap();
    let name = scaling.factors.keys().next().unwrap();
    assert_ne!(sf.tensor_f32(sf.tensor(name).unwrap()).unwrap(), weights(name).unwrap(), "{name} was not scaled");
    let tokens = m.tok.encode(&text[..2_000], false);
    let tokens = &tokens[..64];
    let logits = |path: &std::path::Path| {
        let model = smelt_models::load(path, LoadOptions::default()).unwrap().model;
        // An f32 cache: an f16 one rounds V's smallest rows below f16's normal range, which
        // scaling moves.
        let mut sess = model.session_with(64, smelt_models::KvType::F32);
        model.forward(&pool, &mut sess, tokens, true).unwrap().to_vec()
    };
    let (a, b) = (logits(&plain), logits(&folded));
    let max_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = a.iter().map(|x| x.abs()).fold(0f32, f32::max);
    eprintln!("folded model: max |logit difference| {max_diff:.2e} (logits up to {scale:.1})");
    assert!(max_diff <= 1e-6 * scale, "the folded model's logits differ by {max_diff}");
    let _ = std::fs::remove_dir_all(&dir);
}
