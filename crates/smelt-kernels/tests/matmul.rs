//! `gemv` and `gemm` against a plain f64 loop over the reference dequantizations of the weights
//! and of the activations as the kernels see them (quantized to the activation format).

use smelt_formats::quant::quantize_to_vec;
use smelt_formats::GgmlType;
use smelt_kernels::act::convert_rows;
use smelt_kernels::dot::{activation_type, exact_f64};
use smelt_kernels::matmul::{gemm, gemm_multi, gemv, QMatrix, DEQUANT_GEMM_MIN_ROWS};
use smelt_kernels::pool::ThreadPool;
use smelt_kernels::tolerance::MATMUL;

fn signal(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// Y[t, r] in f64 (with X as the kernels see it) and its error scale, from `exact_f64`. From
/// `DEQUANT_GEMM_MIN_ROWS` rows on (and always for float weights), `gemm` multiplies the f32
/// activations themselves.
fn expected(ty: GgmlType, w: &[u8], rows: usize, cols: usize, x: &[f32], m: usize) -> (Vec<f64>, Vec<f64>) {
    let f32_path = m >= DEQUANT_GEMM_MIN_ROWS || matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
    if f32_path {
        let wf = smelt_formats::quant::dequantize_to_vec(ty, w).unwrap();
        let (mut y, mut scale) = (vec![0f64; m * rows], vec![0f64; m * rows]);
        for t in 0..m {
            for r in 0..rows {
                for c in 0..cols {
                    let p = wf[r * cols + c] as f64 * x[t * cols + c] as f64;
                    y[t * rows + r] += p;
                    scale[t * rows + r] += p.abs();
                }
            }
        }
        return (y, scale);
    }
    let act = activation_type(ty).unwrap();
    let mut xa = Vec::new();
    convert_rows(act, x, cols, &mut xa).unwrap();
    let (wrow, xrow) = (w.len() / rows, xa.len() / m);
    let (mut y, mut scale) = (vec![0f64; m * rows], vec![0f64; m * rows]);
    for t in 0..m {
        for r in 0..rows {
            let (a, s) = exact_f64(ty, &w[r * wrow..(r + 1) * wrow], &xa[t * xrow..(t + 1) * xrow]).unwrap();
            (y[t * rows + r], scale[t * rows + r]) = (s, a);
        }
    }
    (y, scale)
}

#[test]
fn gemv_and_gemm_match_f64_on_every_type() {
    let pool = ThreadPool::new(3);
    let mut scratch = Vec::new();
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::IQ4_NL, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let cols = if ty.block_elems() == 256 { 512 } else { 96 };
        for rows in [1, 17, 100] {
            let w = quantize_to_vec(ty, &signal(rows * cols, rows as u32)).unwrap();
            let mat = QMatrix::new(ty, rows, cols, &w).unwrap();
            for m in [1, 3, 9, 17] {
                let x = signal(m * cols, 1000 + m as u32);
                let (want, scale) = expected(ty, &w, rows, cols, &x, m);
                let mut y = vec![f32::NAN; m * rows];
                gemm(&pool, &mat, &x, m, &mut y, &mut scratch).unwrap();
                for i in 0..m * rows {
                    MATMUL.check(y[i], want[i] as f32, scale[i] as f32).unwrap_or_else(|e| panic!("gemm {ty} {rows}x{cols} m={m} [{i}]: {e}"));
                }
                if m == 1 {
                    let mut y1 = vec![f32::NAN; rows];
                    gemv(&pool, &mat, &x, &mut y1, &mut scratch).unwrap();
                    for i in 0..rows {
                        MATMUL.check(y1[i], want[i] as f32, scale[i] as f32).unwrap_or_else(|e| panic!("gemv {ty} {rows}x{cols} [{i}]: {e}"));
                    }
                }
            }
        }
    }
}

#[test]
fn gemm_multi_matches_the_f64_products_of_each_matrix() {
    // Q, K and V of different heights (one chunk straddling nothing), the same activation
    // rows; a type pair with two activation formats and a float matrix take the fallback.
    let pool = ThreadPool::new(2);
    let mut scratch = Vec::new();
    for tys in [[GgmlType::Q4_0; 3], [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::IQ4_NL], [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q4_K], [GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::F16]] {
        let cols = 512;
        let heights = [96, 32, 33];
        let ws: Vec<Vec<u8>> = tys.iter().zip(heights).map(|(&ty, rows)| quantize_to_vec(ty, &signal(rows * cols, rows as u32 + 7)).unwrap()).collect();
        let mats: Vec<QMatrix> = tys.iter().zip(heights).zip(&ws).map(|((&ty, rows), w)| QMatrix::new(ty, rows, cols, w).unwrap()).collect();
        for m in [1, 2, 5, 8, 16] {
            let x = signal(m * cols, 77 + m as u32);
            let mut ys: Vec<Vec<f32>> = heights.iter().map(|&r| vec![f32::NAN; m * r]).collect();
            let mut outs: Vec<&mut [f32]> = ys.iter_mut().map(|y| &mut y[..]).collect();
            gemm_multi(&pool, &mats.iter().collect::<Vec<_>>(), &x, m, &mut outs, &mut scratch).unwrap();
            for (j, ((&ty, rows), w)) in tys.iter().zip(heights).zip(&ws).enumerate() {
                let (want, scale) = expected(ty, w, rows, cols, &x, m);
                for i in 0..m * rows {
                    MATMUL.check(ys[j][i], want[i] as f32, scale[i] as f32).unwrap_or_else(|e| panic!("gemm_multi {tys:?} matrix {j} m={m} [{i}]: {e}"));
                }
            }
        }
    }
    let w = vec![0u8; 18 * 4];
    let mat = QMatrix::new(GgmlType::Q4_0, 2, 64, &w).unwrap();
    let (mut a, mut b) = (vec![0.0; 4], vec![0.0; 3]);
    assert!(gemm_multi(&pool, &[&mat, &mat], &[0.0; 128], 2, &mut [&mut a, &mut b], &mut scratch).is_err());
    assert!(gemm_multi(&pool, &[&mat], &[0.0; 128], 2, &mut [&mut a, &mut b[..]], &mut scratch).is_err());
}

#[test]
fn shape_errors_are_reported() {
    let pool = ThreadPool::new(1);
    let w = vec![0u8; 18 * 4];
    assert!(QMatrix::new(GgmlType::Q4_0, 2, 64, &w).is_ok());
    assert!(QMatrix::new(GgmlType::Q4_0, 3, 64, &w).is_err());
    assert!(QMatrix::new(GgmlType::Q4_0, 2, 48, &w).is_err());
    let mat = QMatrix::new(GgmlType::Q4_0, 2, 64, &w).unwrap();
    let mut y = vec![0.0; 2];
    assert!(gemv(&pool, &mat, &[0.0; 63], &mut y, &mut Vec::new()).is_err());
    assert!(gemm(&pool, &mat, &[0.0; 64], 2, &mut y, &mut Vec::new()).is_err());
    let w = vec![0u8; 54 * 256];
    let tq = QMatrix::new(GgmlType::TQ1_0, 1, 256 * 256, &w).unwrap();
    let err = gemv(&pool, &tq, &vec![0.0; 65536], &mut [0.0], &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("TQ1_0"), "{err}");
}
