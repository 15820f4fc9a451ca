//! Structured column pruning (`prune::columns`, the OBS step for whole groups of input columns
//! with a bias absorbing their mean) against numpy (tests/reference/structured_reference.py,
//! which checks its greedy OBS updates against a direct least-squares refit) on real SmolLM2
//! matrices with the Hessians of their real inputs over Austen: FFN channels of `ffn_down`
//! (groups of one column) and a head group of `attn_output` (3 query heads of 64, one key/value
//! head). The same groups go in the same order, and the refitted weights and bias agree.
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
