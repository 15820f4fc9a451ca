//! Importance-weighted quantization: each block's scale (and offset) minimizes
//! `E = sum_i w_i (x_i - q_i)^2` with `w_i = imp_i * sqrt(sigma^2 + x_i^2)`, where `imp_i` is
//! the importance of the element's input column (the mean square activation it multiplies, from
//! an importance matrix), `sigma^2` the block's mean square weight, and `q_i` the value stored.
//! `imp_i` alone is the diagonal of the layer's output-error Hessian; the second factor makes
//! larger weights count more among equally important columns, as round-to-nearest searches do.
//!
//! The block layouts, level ranges and scale encodings are the reference quantizers' (the
//! K-quants share their block functions); only the searches see the weights. Uniform importance
//! gives the same kind of search as the reference, not its bytes.

use half::f16;

use super::blocks::*;
use super::kquants;
use super::sparse;
use super::search::{make_qkx2_quants, make_qx_quants, AsymSearch, RmseWeight, GROUP_MAX_EPS};
use super::{GgmlType, QuantError};

/// Types with an importance-weighted quantizer.
pub fn supports_weighted(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::IQ4_NL
            | GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::Q4_0_S24
            | GgmlType::Q8_0_S24
    ) || super::iq_quant::can_write(ty)
}

/// Quantizes `src` into `ty` with `imp` (one importance per element of `src`) weighting every
/// block's search. Types without a weighted search (plain floats) quantize as the reference does.
pub fn quantize_weighted(ty: GgmlType, src: &[f32], imp: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    if imp.len() != src.len() {
        return Err(QuantError::WrongByteLength { ty, n: src.len(), expected: src.len(), got: imp.len() });
    }
    if !supports_weighted(ty) {
        return super::quantize(ty, src, dst);
    }
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    if !src.len().is_multiple_of(be) {
        return Err(QuantError::NotBlockMultiple { ty, n: src.len(), block: be });
    }
    let expected = src.len() / be * bb;
    if dst.len() != expected {
        return Err(QuantError::WrongByteLength { ty, n: src.len(), expected, got: dst.len() });
    }
    for ((x, w), out) in src.chunks_exact(be).zip(imp.chunks_exact(be)).zip(dst.chunks_exact_mut(bb)) {
        match ty {
            GgmlType::Q4_0 => put(out, sym_block(x, w, 8, |d, q| BlockQ4_0 { d, qs: nibbles(q) })),
            GgmlType::Q5_0 => put(out, sym_block(x, w, 16, |d, q| BlockQ5_0 { d, qh: high_bits(q), qs: nibbles(q) })),
            GgmlType::Q8_0 => put(out, sym_block(x, w, 128, |d, q| BlockQ8_0 { d, qs: std::array::from_fn(|j| (q[j] as i32 - 128) as i8) })),
            GgmlType::Q4_1 => put(out, asym_block(x, w, 15, |d, m, q| BlockQ4_1 { d, m, qs: nibbles(q) })),
            GgmlType::Q5_1 => put(out, asym_block(x, w, 31, |d, m, q| BlockQ5_1 { d, m, qh: high_bits(q), qs: nibbles(q) })),
            GgmlType::IQ4_NL => put(out, iq4_nl_block(x, w)),
            GgmlType::Q2_K => put(out, kquants::q2_k_block(x, Some(w))),
            GgmlType::Q3_K => put(out, kquants::q3_k_block(x, Some(w))),
            GgmlType::Q4_K => put(out, kquants::q4_k_block(x, Some(w))),
            GgmlType::Q5_K => put(out, kquants::q5_k_block(x, Some(w))),
            GgmlType::Q6_K => put(out, kquants::q6_k_block(x, Some(w))),
            // 2:4 sparse: each half of the pruned block searched as the dense type's block
            // with its importances (the pruned zeros stay exact at any scale).
            GgmlType::Q4_0_S24 => {
                let (d, q, idx) = sparse::encode(x, |h, v| sym_block(v, &w[32 * h..32 * h + 32], 8, |d, q| (d, q.map(|v| v as i32))));
                put(out, sparse::BlockQ4_0S24 { d, qs: sparse::pack_nibbles(&q), idx })
            }
            GgmlType::Q8_0_S24 => {
                let (d, q, idx) = sparse::encode(x, |h, v| sym_block(v, &w[32 * h..32 * h + 32], 128, |d, q| (d, q.map(|v| v as i32 - 128))));
                put(out, sparse::BlockQ8_0S24 { d, qs: q.map(|v| v as i8), idx })
            }
            t if super::iq_quant::can_write(t) => super::iq_quant::quantize_block(t, x, Some(w), out),
            _ => unreachable!("supports_weighted lists the types handled here"),
        }
    }
    Ok(())
}

fn put<B: bytemuck::Pod>(out: &mut [u8], b: B) {
    out.copy_from_slice(bytemuck::bytes_of(&b));
}

/// `w_i = imp_i * sqrt(sigma^2 + x_i^2)` for a block.
fn search_weights(x: &[f32], imp: &[f32]) -> [f32; QK] {
    let sigma2 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    std::array::from_fn(|i| imp[i] * (sigma2 + x[i] * x[i]).sqrt())
}

/// Low nibbles of elements 0..16, high nibbles of 16..32.
fn nibbles(q: &[u8; QK]) -> [u8; QK / 2] {
    std::array::from_fn(|j| (q[j] & 0xF) | ((q[j + QK / 2] & 0xF) << 4))
}

/// Bit 4 of each of 32 values, little-endian.
fn high_bits(q: &[u8; QK]) -> [u8; 4] {
    q.iter().enumerate().fold(0u32, |h, (j, &v)| h | (((v as u32 >> 4) & 1) << j)).to_le_bytes()
}

/// Symmetric block: `x ~ d (q - nmax)`, `q in [0, 2 nmax)`, the scale from the weighted search;
/// the levels are re-rounded against `d` as stored in f16.
fn sym_block<B>(x: &[f32], imp: &[f32], nmax: i32, make: impl Fn(f16, &[u8; QK]) -> B) -> B {
    let w = search_weights(x, imp);
    let mut l = [0i8; QK];
    let scale = make_qx_quants(x, nmax, &mut l, RmseWeight::Uniform, Some(&w));
    let d = f16::from_f32(scale);
    let df = d.to_f32();
    let id = if df != 0.0 { 1.0 / df } else { 0.0 };
    let q: [u8; QK] = std::array::from_fn(|j| (((x[j] * id).round() as i32).clamp(-nmax, nmax - 1) + nmax) as u8);
    make(d, &q)
}

/// Asymmetric block: `x ~ d q + m`, `q in [0, nmax]`, scale and offset from the weighted search;
/// levels re-rounded against `d` and `m` as stored in f16.
fn asym_block<B>(x: &[f32], imp: &[f32], nmax: i32, make: impl Fn(f16, f16, &[u8; QK]) -> B) -> B {
    let w = search_weights(x, imp);
    let mut l = [0u8; QK];
    let (scale, neg_min) = make_qkx2_quants(x, &w, nmax, &mut l, AsymSearch { rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false });
    let (d, m) = (f16::from_f32(scale), f16::from_f32(-neg_min));
    let (df, mf) = (d.to_f32(), m.to_f32());
    let q: [u8; QK] = std::array::from_fn(|j| if df > 0.0 { ((x[j] - mf) / df).round().clamp(0.0, nmax as f32) as u8 } else { 0 });
    make(d, m, &q)
}

/// IQ4_NL: the block's scale from [`iq4_scale`] with ggml's IQ4_NL search weights (`sigma^2`
/// twice the block's mean square), indices picked against it.
fn iq4_nl_block(x: &[f32], imp: &[f32]) -> BlockIq4Nl {
    let sigma2 = 2.0 * x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let w: [f32; QK] = std::array::from_fn(|i| imp[i] * (sigma2 + x[i] * x[i]).sqrt());
    let d = iq4_scale(x, &w);
    let df = f16::from_f32(d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let l: [u8; QK] = std::array::from_fn(|j| iq4_index(id * x[j]) as u8);
    BlockIq4Nl { d: df, qs: std::array::from_fn(|j| l[j] | (l[j + QK / 2] << 4)) }
}

/// Index of the IQ4_NL grid value nearest to `v`.
pub(super) fn iq4_index(v: f32) -> usize {
    let grid = |i: usize| KVALUES_IQ4NL[i] as f32;
    (0..16).min_by(|&a, &b| (grid(a) - v).abs().total_cmp(&(grid(b) - v).abs())).unwrap_or(0)
}

/// The scale of 32 weights `x` on the IQ4_NL grid under search weights `w`: for the inverse
/// scale `-v_0 / max` (the block's extreme on the grid's positive side) and the candidates
/// `(k + v_0) / max`, `k = -7..=7` (on its negative side; the grid runs from -127 to 113, so
/// both sides must be tried), each element takes its nearest grid value; the weighted
/// least-squares scale of the best candidate is returned (0 for an all-zero block).
pub(super) fn iq4_scale(x: &[f32], w: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let grid = |i: usize| KVALUES_IQ4NL[i] as f32;
    let fit = |id: f32| {
        let (mut sqx, mut sq2) = (0.0f32, 0.0f32);
        for j in 0..x.len() {
            let q = grid(iq4_index(id * x[j]));
            sqx += w[j] * q * x[j];
            sq2 += w[j] * q * q;
        }
        (sqx, sq2)
    };
    let v0 = grid(0);
    // Start on the positive side of the grid (d = -max / v_0), then try the others.
    let (sqx, sq2) = fit(v0 / -max);
    let mut d = if sq2 > 0.0 { sqx / sq2 } else { 0.0 };
    let mut best = d * sqx;
    for k in -7..=7 {
        let (sqx, sq2) = fit((k as f32 + v0) / max);
        if sq2 > 0.0 && sqx * sqx > best * sq2 {
            d = sqx / sq2;
            best = d * sqx;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_to_vec, quantize_to_vec};

    fn signal(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * (1.0 + (i % 5) as f32) * 0.04
            })
            .collect()
    }

    /// On a signal whose columns differ in importance by 100x, the weighted quantizer's
    /// importance-weighted error is below the reference round-to-nearest's, for every type.
    #[test]
    fn weighted_error_beats_round_to_nearest_where_it_counts() {
        let x = signal(4096, 7);
        let imp: Vec<f32> = (0..x.len()).map(|i| if (i * 7919) % 13 < 3 { 100.0 } else { 1.0 }).collect();
        let werr = |y: &[f32]| x.iter().zip(y).zip(&imp).map(|((a, b), w)| w * (a - b) * (a - b)).sum::<f32>();
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::IQ4_NL, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q4_0_S24, GgmlType::Q8_0_S24, GgmlType::IQ2_XS, GgmlType::IQ3_S, GgmlType::IQ4_XS] {
            let rtn = dequantize_to_vec(ty, &quantize_to_vec(ty, &x).unwrap()).unwrap();
            let mut q = vec![0u8; x.len() / ty.block_elems() * ty.block_bytes()];
            quantize_weighted(ty, &x, &imp, &mut q).unwrap();
            let wq = dequantize_to_vec(ty, &q).unwrap();
            let (a, b) = (werr(&wq), werr(&rtn));
            assert!(a < b, "{ty}: weighted error {a} not below round-to-nearest {b}");
        }
    }

    /// With equal importance everywhere the weighted IQ4_NL search, which tries the reference
    /// search's candidate scales, has no larger error than the reference.
    #[test]
    fn weighted_iq4_nl_is_not_worse_than_the_reference_with_flat_importance() {
        let mut s = 12345u32;
        let x: Vec<f32> = (0..32 * 2000)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                let u = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                u * u * u * 8.0
            })
            .collect();
        let ty = GgmlType::IQ4_NL;
        let err = |y: &[f32]| x.iter().zip(y).map(|(a, b)| ((a - b) * (a - b)) as f64).sum::<f64>();
        let reference = err(&dequantize_to_vec(ty, &quantize_to_vec(ty, &x).unwrap()).unwrap());
        let mut q = vec![0u8; x.len() / 32 * ty.block_bytes()];
        quantize_weighted(ty, &x, &vec![1.0; x.len()], &mut q).unwrap();
        let weighted = err(&dequantize_to_vec(ty, &q).unwrap());
        assert!(weighted <= reference * 1.01, "weighted {weighted} vs reference {reference}");
    }

    #[test]
    fn zero_blocks_and_bad_lengths() {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::IQ4_NL, GgmlType::Q4_K, GgmlType::Q6_K] {
            let n = ty.block_elems().max(32) * 8;
            let mut q = vec![0u8; n / ty.block_elems() * ty.block_bytes()];
            quantize_weighted(ty, &vec![0.0; n], &vec![1.0; n], &mut q).unwrap();
            assert!(dequantize_to_vec(ty, &q).unwrap().iter().all(|&v| v == 0.0), "{ty}");
            assert!(quantize_weighted(ty, &vec![0.0; n], &vec![1.0; n - 1], &mut q).is_err());
        }
    }
}
