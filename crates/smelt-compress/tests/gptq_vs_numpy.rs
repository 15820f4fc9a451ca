//! GPTQ against a numpy implementation of the published algorithm (tests/reference/
//! gptq_reference.py) on real SmolLM2 matrices, with the Hessians of their real inputs over
//! Austen: the same H, column order and Q4_0 block boundaries, block scales decided as the
//! reference quantizer decides them. The two results agree element for element (up to rare
//! rounding flips from f32 against f64 arithmetic), their layer output errors agree within 1%,
//! and both are well below round-to-nearest's.
//!
//! Needs `python3` with numpy (scripts/test installs it; `SMELT_PYTHON` overrides).

use std::process::Command;

mod common;
use common::save;

use smelt_compress::gptq::{gptq, GptqInput, GptqOptions};
use smelt_formats::npy::NpyData;
use smelt_formats::quant::dequantize;
use smelt_formats::GgmlType;
use smelt_models::observe::MatrixInput;


#[test]
fn gptq_matches_numpy_on_real_matrices() {
    let layer = 4;
    let common::Calibrated { m, pool, stats, .. } = common::calibrated([layer]);
    let dir = std::env::temp_dir().join(format!("smelt-gptq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let l = &m.model.layers[layer];
    for (lin, input) in [(&l.wq, MatrixInput::AttnQkv), (&l.down, MatrixInput::FfnDown)] {
        let (rows, cols) = (lin.rows, lin.cols);
        let mut w = vec![0f32; rows * cols];
        dequantize(lin.ty, lin.bytes(), &mut w).unwrap();
        let h = stats[&(layer, input)].hessian.as_ref().unwrap();
        let bytes = gptq(&pool, GptqInput { w: &w, rows, cols, h, importance: None }, GgmlType::Q4_0, GptqOptions::default()).unwrap();
        let mut q = vec![0f32; rows * cols];
        dequantize(GgmlType::Q4_0, &bytes, &mut q).unwrap();
        let (pw, ph, pq) = (dir.join("w.npy"), dir.join("h.npy"), dir.join("q.npy"));
        save(&pw, vec![rows, cols], NpyData::F32(w));
        save(&ph, vec![cols, cols], NpyData::F64(h.clone()));
        save(&pq, vec![rows, cols], NpyData::F32(q));
        let out = Command::new(&python).arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/gptq_reference.py")).args([&pw, &ph, &pq]).arg("0.01").output().expect("run python3");
        assert!(out.status.success(), "gptq_reference.py: {}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (agree, en, es, er) = (r["agree"].as_f64().unwrap(), r["err_numpy"].as_f64().unwrap(), r["err_smelt"].as_f64().unwrap(), r["err_rtn"].as_f64().unwrap());
        eprintln!("{}: agree {agree:.4}, error numpy {en:.4e}, smelt {es:.4e}, round-to-nearest {er:.4e}", lin.name);
        assert!(agree > 0.99, "{}: only {agree} of the elements agree with numpy", lin.name);
        assert!((es / en - 1.0).abs() < 0.01, "{}: output error {es} vs numpy's {en}", lin.name);
        assert!(es < 0.8 * er, "{}: GPTQ's error {es} is not well below round-to-nearest's {er}", lin.name);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
