//! Backward through a frozen quantized base (the weights LoRA adapters sit on) against numpy:
//! `dx = dy W` with `W` dequantized by the `gguf` package (tests/reference/frozen_base_numpy.py),
//! for block types of every family, a row count that leaves a partial tile, 1 and 2 threads,
//! written and accumulated.
//!
//! Needs `python3` with numpy and gguf (scripts/test installs them; `SMELT_PYTHON` overrides).

use std::process::Command;

use smelt_formats::npy::{write_npy, NpyArray, NpyData};
use smelt_formats::GgmlType;
use smelt_kernels::pool::ThreadPool;
use smelt_models::backward::frozen::{frozen_linear_backward, FROZEN_TILE};
use smelt_models::linear::Linear;

fn save(path: &std::path::Path, shape: Vec<usize>, data: NpyData) {
    write_npy(&mut std::fs::File::create(path).unwrap(), &NpyArray { shape, data }).unwrap();
}

/// Deterministic values in [-1, 1) (SplitMix64).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

#[test]
fn frozen_backward_matches_numpy() {
    let (rows, cols, t) = (FROZEN_TILE + 85, 512, 37);
    let dir = std::env::temp_dir().join(format!("smelt-frozen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let w = values(rows * cols, 1);
    let dy = values(t * rows, 2);
    for (k, ty) in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::IQ4_NL, GgmlType::F16].into_iter().enumerate() {
        let lin = Linear::from_f32("blk.0.ffn_down.weight", rows, cols, w.clone(), Some(ty)).unwrap();
        let threads = 1 + k % 2;
        let pool = ThreadPool::new(threads);
        // Accumulated on every other type: onto a dx of ones.
        let added = if k % 4 < 2 { 0.0 } else { 1.0 };
        let mut dx = vec![added; t * cols];
        frozen_linear_backward(&pool, &lin, &dy, t, &mut dx, added != 0.0).unwrap();
        let (pw, pdy, pdx) = (dir.join("w.npy"), dir.join("dy.npy"), dir.join("dx.npy"));
        save(&pw, vec![rows, lin.row_bytes()], NpyData::U8(lin.bytes().to_vec()));
        save(&pdy, vec![t, rows], NpyData::F32(dy.clone()));
        save(&pdx, vec![t, cols], NpyData::F32(dx));
        let out = Command::new(&python)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/frozen_base_numpy.py"))
            .arg(&pw)
            .arg(ty.to_string())
            .arg(cols.to_string())
            .arg(&pdy)
            .arg(&pdx)
            .arg(added.to_string())
            .output()
            .expect("run python3");
        assert!(out.status.success(), "frozen_base_numpy.py: {}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (err, scale) = (r["max_abs"].as_f64().unwrap(), r["scale"].as_f64().unwrap());
        eprintln!("{ty} on {threads} thread(s){}: max |dx - numpy| {err:.3e} of {scale:.3}", if added != 0.0 { ", accumulated" } else { "" });
        assert!(scale > 1.0 && err < 1e-5 * scale, "{ty}: dx differs from numpy's by {err} (largest {scale})");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn frozen_backward_refuses_wrong_shapes() {
    let lin = Linear::from_f32("w", 64, 32, values(64 * 32, 3), Some(GgmlType::Q8_0)).unwrap();
    let pool = ThreadPool::new(1);
    let mut dx = vec![0f32; 2 * 32];
    assert!(frozen_linear_backward(&pool, &lin, &[0.0; 2 * 63], 2, &mut dx, false).is_err());
    assert!(frozen_linear_backward(&pool, &lin, &[0.0; 2 * 64], 2, &mut dx[..63], false).is_err());
}
