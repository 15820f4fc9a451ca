//! Reference quantize/dequantize of the K-quant super-blocks (256 elements): Q2_K, Q3_K, Q4_K,
//! Q5_K, Q6_K and the activation format Q8_K. The algorithms are ggml's reference ones (scale
//! search per sub-block, then the sub-block scales quantized against one f16 super-scale, then
//! every element re-rounded against its final scale); dequantization follows the arithmetic
//! order of the `gguf` Python package so results agree bit for bit.

// Loops index the levels, scales and inputs of a sub-block together; ranges read best here.
#![allow(clippy::needless_range_loop)]

use half::f16;

use super::blocks::*;
use super::GgmlType;
use super::search::{make_q3_quants, make_qkx2_quants, make_qx_quants, AsymSearch, RmseWeight, GROUP_MAX_EPS};
use super::{nearest_int, read_blocks, write_blocks};

/// Packs 2-bit levels: `qs[32 h + l]` holds elements `128 h + 32 s + l` at bits `2 s`.
fn pack_2bit(levels: &[u8; QK_K]) -> [u8; QK_K / 4] {
    let mut qs = [0u8; QK_K / 4];
    for h in 0..2 {
        for l in 0..32 {
            let e = 128 * h + l;
            qs[32 * h + l] = levels[e] | (levels[e + 32] << 2) | (levels[e + 64] << 4) | (levels[e + 96] << 6);
        }
    }
    qs
}

fn unpack_2bit(qs: &[u8; QK_K / 4], e: usize) -> u8 {
    let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
    (qs[32 * h + l] >> (2 * s)) & 3
}

/// Packs 4-bit levels: `qs[32 c + l]` holds element `64 c + l` (low) and `64 c + 32 + l` (high).
fn pack_4bit(levels: &[u8; QK_K]) -> [u8; QK_K / 2] {
    let mut qs = [0u8; QK_K / 2];
    for c in 0..4 {
        for l in 0..32 {
            qs[32 * c + l] = (levels[64 * c + l] & 0xF) | ((levels[64 * c + 32 + l] & 0xF) << 4);
        }
    }
    qs
}

fn unpack_4bit(qs: &[u8; QK_K / 2], e: usize) -> u8 {
    let (c, s, l) = (e / 64, (e % 64) / 32, e % 32);
    (qs[32 * c + l] >> (4 * s)) & 0xF
}

fn max_of(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, &s| if s > m { s } else { m })
}

fn f16r(x: f32) -> (f16, f32) {
    let h = f16::from_f32(x);
    (h, h.to_f32())
}

// ---------------------------------------------------------------- Q2_K

pub(super) fn quantize_q2_k(src: &[f32], dst: &mut [u8]) {
    write_blocks(src, dst, QK_K, |x| q2_k_block(x, None));
}

/// The search weight of element `l` of a super-block: the caller's importance times
/// `sqrt(sigma^2 + x_l^2)` (`sigma^2` the super-block's mean square), so that among equally
/// important inputs the larger weights count more; `None` when there is no importance.
fn importance_weight(x: &[f32], imp: Option<&[f32]>) -> Option<[f32; QK_K]> {
    let imp = imp?;
    let sigma2 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    Some(std::array::from_fn(|l| imp[l] * (sigma2 + x[l] * x[l]).sqrt()))
}

/// One Q2_K super-block; `imp` (one importance per element) weights the sub-block searches.
pub(super) fn q2_k_block(x: &[f32], imp: Option<&[f32]>) -> BlockQ2K {
    const Q4SCALE: f32 = 15.0;
    {
        let iw = importance_weight(x, imp);
        let mut levels = [0u8; QK_K];
        let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
        let p = AsymSearch { rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: iw.is_none() };
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            let w: [f32; 16] = std::array::from_fn(|l| iw.map_or(xs[l].abs(), |iw| iw[16 * j + l]));
            (scales[j], mins[j]) = make_qkx2_quants(xs, &w, 3, &mut levels[16 * j..16 * j + 16], p);
        }
        let (max_scale, max_min) = (max_of(&scales), max_of(&mins));
        let mut b = BlockQ2K { scales: [0; 16], qs: [0; 64], d: f16::ZERO, dmin: f16::ZERO };
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..16 {
                b.scales[j] = nearest_int(iscale * scales[j]) as u8;
            }
            b.d = f16::from_f32(max_scale / Q4SCALE);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..16 {
                b.scales[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
            }
            b.dmin = f16::from_f32(max_min / Q4SCALE);
        }
        for j in 0..16 {
            let d = b.d.to_f32() * (b.scales[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let dm = b.dmin.to_f32() * (b.scales[j] >> 4) as f32;
            for ii in 0..16 {
                levels[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
            }
        }
        b.qs = pack_2bit(&levels);
        b
    }
}

pub(super) fn dequantize_q2_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in read_blocks::<BlockQ2K>(src).zip(dst.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for (e, o) in y.iter_mut().enumerate() {
            let sc = b.scales[e / 16];
            let dl = d * (sc & 0xF) as f32;
            let ml = dmin * (sc >> 4) as f32;
            *o = dl * unpack_2bit(&b.qs, e) as f32 - ml;
        }
    }
}

// ---------------------------------------------------------------- Q3_K

pub(super) fn quantize_q3_k(src: &[f32], dst: &mut [u8]) {
    write_blocks(src, dst, QK_K, |x| q3_k_block(x, None));
}

/// One Q3_K super-block; with `imp`, each sub-block's scale is the importance-weighted search's.
pub(super) fn q3_k_block(x: &[f32], imp: Option<&[f32]>) -> BlockQ3K {
    {
        let iw = importance_weight(x, imp);
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut amax, mut max_scale) = (0.0f32, 0.0f32);
        for j in 0..16 {
            let (xs, ls) = (&x[16 * j..16 * j + 16], &mut levels[16 * j..16 * j + 16]);
            scales[j] = match &iw {
                None => make_q3_quants(xs, 4, ls, true),
                Some(iw) => make_qx_quants(xs, 4, ls, RmseWeight::Uniform, Some(&iw[16 * j..16 * j + 16])),
            };
            if scales[j].abs() > amax {
                amax = scales[j].abs();
                max_scale = scales[j];
            }
        }
        let mut b = BlockQ3K { hmask: [0; 32], qs: [0; 64], scales: [0; 12], d: f16::ZERO };
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..16 {
                let l = ((nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    b.scales[j] = l & 0xF;
                } else {
                    b.scales[j - 8] |= (l & 0xF) << 4;
                }
                b.scales[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
            }
            b.d = f16::from_f32(1.0 / iscale);
        }
        let sc = q3k_scales(&b.scales);
        for j in 0..16 {
            let d = b.d.to_f32() * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                levels[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-4, 3) + 4) as i8;
            }
        }
        let mut low = [0u8; QK_K];
        for (e, &l) in levels.iter().enumerate() {
            let l = l as u8;
            if l > 3 {
                b.hmask[e % 32] |= 1 << (e / 32);
            }
            low[e] = l & 3;
        }
        b.qs = pack_2bit(&low);
        b
    }
}

pub(super) fn dequantize_q3_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in read_blocks::<BlockQ3K>(src).zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let sc = q3k_scales(&b.scales);
        for (e, o) in y.iter_mut().enumerate() {
            let dl = d * sc[e / 16] as f32;
            let high = (b.hmask[e % 32] >> (e / 32)) & 1;
            let q = unpack_2bit(&b.qs, e) as i8 - if high == 0 { 4 } else { 0 };
            *o = dl * q as f32;
        }
    }
}

// ---------------------------------------------------------------- Q4_K / Q5_K

/// Packs eight 6-bit scales and mins into the 12-byte layout read by [`get_scale_min_k4`].
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut s = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// The shared first half of Q4_K and Q5_K: per 32-element sub-block asymmetric search with
/// weights `w_i = rms(x) + |x_i|`, then 6-bit quantization of the scales and mins. Returns
/// `(d, dmin, packed scales, levels)` with levels in `0..=nmax`.
fn quantize_k_asym(x: &[f32], imp: Option<&[f32]>, nmax: i32, p: AsymSearch) -> (f16, f16, [u8; K_SCALE_SIZE], [u8; QK_K]) {
    let iw = importance_weight(x, imp);
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().fold(0.0, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let w: [f32; 32] = std::array::from_fn(|l| iw.map_or(av_x + xs[l].abs(), |iw| iw[32 * j + l]));
        (scales[j], mins[j]) = make_qkx2_quants(xs, &w, nmax, &mut levels[32 * j..32 * j + 32], p);
    }
    let (max_scale, max_min) = (max_of(&scales), max_of(&mins));
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let ls: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
    let lm: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
    let packed = pack_scale_min_k4(&ls, &lm);
    let (d, df) = f16r(max_scale / 63.0);
    let (dmin, dminf) = f16r(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let dl = df * sc as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = dminf * m as f32;
        for ii in 0..32 {
            levels[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dl).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, levels)
}

pub(super) fn quantize_q4_k(src: &[f32], dst: &mut [u8]) {
    write_blocks(src, dst, QK_K, |x| q4_k_block(x, None));
}

/// One Q4_K super-block; `imp` weights the sub-block searches.
pub(super) fn q4_k_block(x: &[f32], imp: Option<&[f32]>) -> BlockQ4K {
    let (d, dmin, scales, levels) = quantize_k_asym(x, imp, 15, AsymSearch { rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false });
    BlockQ4K { d, dmin, scales, qs: pack_4bit(&levels) }
}

pub(super) fn dequantize_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in read_blocks::<BlockQ4K>(src).zip(dst.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for (e, o) in y.iter_mut().enumerate() {
            let (sc, m) = get_scale_min_k4(e / 32, &b.scales);
            *o = (d * sc as f32) * unpack_4bit(&b.qs, e) as f32 - dmin * m as f32;
        }
    }
}

pub(super) fn quantize_q5_k(src: &[f32], dst: &mut [u8]) {
    write_blocks(src, dst, QK_K, |x| q5_k_block(x, None));
}

/// One Q5_K super-block; `imp` weights the sub-block searches.
pub(super) fn q5_k_block(x: &[f32], imp: Option<&[f32]>) -> BlockQ5K {
    let (d, dmin, scales, levels) = quantize_k_asym(x, imp, 31, AsymSearch { rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: false });
    let mut qh = [0u8; QK_K / 8];
    for (e, &l) in levels.iter().enumerate() {
        qh[e % 32] |= (l >> 4) << (e / 32);
    }
    BlockQ5K { d, dmin, scales, qh, qs: pack_4bit(&levels) }
}

pub(super) fn dequantize_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in read_blocks::<BlockQ5K>(src).zip(dst.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for (e, o) in y.iter_mut().enumerate() {
            let (sc, m) = get_scale_min_k4(e / 32, &b.scales);
            let q = unpack_4bit(&b.qs, e) | (((b.qh[e % 32] >> (e / 32)) & 1) << 4);
            *o = (d * sc as f32) * q as f32 - dmin * m as f32;
        }
    }
}

// ---------------------------------------------------------------- Q6_K

pub(super) fn quantize_q6_k(src: &[f32], dst: &mut [u8]) {
    write_blocks(src, dst, QK_K, |x| q6_k_block(x, None));
}

/// One Q6_K super-block; `imp` weights the sub-block searches.
pub(super) fn q6_k_block(x: &[f32], imp: Option<&[f32]>) -> BlockQ6K {
    {
        let iw = importance_weight(x, imp);
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_abs, mut max_scale) = (0.0f32, 0.0f32);
        for ib in 0..16 {
            let qw = iw.as_ref().map(|iw| &iw[16 * ib..16 * ib + 16]);
            scales[ib] = make_qx_quants(&x[16 * ib..16 * ib + 16], 32, &mut levels[16 * ib..16 * ib + 16], RmseWeight::Square, qw);
            if scales[ib].abs() > max_abs {
                max_abs = scales[ib].abs();
                max_scale = scales[ib];
            }
        }
        let mut b = BlockQ6K { ql: [0; 128], qh: [0; 64], scales: [0; 16], d: f16::ZERO };
        if max_abs < GROUP_MAX_EPS {
            return b;
        }
        let iscale = -128.0 / max_scale;
        b.d = f16::from_f32(1.0 / iscale);
        for ib in 0..16 {
            b.scales[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        }
        for j in 0..16 {
            let d = b.d.to_f32() * b.scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                levels[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        for h in 0..2 {
            for t in 0..128 {
                let l = levels[128 * h + t] as u8;
                b.ql[64 * h + t % 64] |= (l & 0xF) << (4 * (t / 64));
                b.qh[32 * h + t % 32] |= (l >> 4) << (2 * (t / 32));
            }
        }
        b
    }
}

pub(super) fn dequantize_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in read_blocks::<BlockQ6K>(src).zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (e, o) in y.iter_mut().enumerate() {
            let (h, t) = (e / 128, e % 128);
            let low = (b.ql[64 * h + t % 64] >> (4 * (t / 64))) & 0xF;
            let high = (b.qh[32 * h + t % 32] >> (2 * (t / 32))) & 3;
            let q = (low | (high << 4)) as i8 - 32;
            *o = (d * b.scales[e / 16] as f32) * q as f32;
        }
    }
}

// ---------------------------------------------------------------- levels under given scales

/// The K-quant block `block` (as its quantizer wrote it) with its levels replaced by `levels`
/// (one per element, in the type's signed or unsigned range, as `grid::BlockGrid` gives them).
pub(super) fn with_levels(ty: GgmlType, block: &[u8], levels: &[i32]) -> Vec<u8> {
    let lv = |off: i32| -> [u8; QK_K] { std::array::from_fn(|e| (levels[e] + off) as u8) };
    match ty {
        GgmlType::Q2_K => {
            let mut b: BlockQ2K = bytemuck::pod_read_unaligned(block);
            b.qs = pack_2bit(&lv(0));
            bytemuck::bytes_of(&b).to_vec()
        }
        GgmlType::Q3_K => {
            let mut b: BlockQ3K = bytemuck::pod_read_unaligned(block);
            let l = lv(4);
            b.hmask = [0; 32];
            let mut low = [0u8; QK_K];
            for (e, &v) in l.iter().enumerate() {
                if v > 3 {
                    b.hmask[e % 32] |= 1 << (e / 32);
                }
                low[e] = v & 3;
            }
            b.qs = pack_2bit(&low);
            bytemuck::bytes_of(&b).to_vec()
        }
        GgmlType::Q4_K => {
            let mut b: BlockQ4K = bytemuck::pod_read_unaligned(block);
            b.qs = pack_4bit(&lv(0));
            bytemuck::bytes_of(&b).to_vec()
        }
        GgmlType::Q5_K => {
            let mut b: BlockQ5K = bytemuck::pod_read_unaligned(block);
            let l = lv(0);
            b.qh = [0; QK_K / 8];
            for (e, &v) in l.iter().enumerate() {
                b.qh[e % 32] |= (v >> 4) << (e / 32);
            }
            b.qs = pack_4bit(&l);
            bytemuck::bytes_of(&b).to_vec()
        }
        GgmlType::Q6_K => {
            let mut b: BlockQ6K = bytemuck::pod_read_unaligned(block);
            let l = lv(32);
            (b.ql, b.qh) = ([0; 128], [0; 64]);
            for h in 0..2 {
                for t in 0..128 {
                    let v = l[128 * h + t];
                    b.ql[64 * h + t % 64] |= (v & 0xF) << (4 * (t / 64));
                    b.qh[32 * h + t % 32] |= (v >> 4) << (2 * (t / 32));
                }
            }
            bytemuck::bytes_of(&b).to_vec()
        }
        _ => block.to_vec(),
    }
}

// ---------------------------------------------------------------- Q8_K

/// Q8_K: `d = max / -127` from the signed absmax, `q = min(127, nearest_int(x / d))`, and the
/// sums of each 16 quants in `bsums`.
pub(super) fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    write_blocks(src, dst, QK_K, |x| {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let mut b = BlockQ8K { d: 0.0, qs: [0; QK_K], bsums: [0; 16] };
        if amax == 0.0 {
            return b;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (j, s) in b.bsums.iter_mut().enumerate() {
            *s = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
        b
    });
}

pub(super) fn dequantize_q8_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in read_blocks::<BlockQ8K>(src).zip(dst.chunks_exact_mut(QK_K)) {
        for (o, &q) in y.iter_mut().zip(b.qs.iter()) {
            *o = b.d * q as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::quant::{dequantize_to_vec, quantize_to_vec, GgmlType};

    fn signal(n: usize) -> Vec<f32> {
        let mut s = 12345u32;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                let u = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                u * (1.0 + (i % 7) as f32) * 0.05
            })
            .collect()
    }

    /// Relative RMS error of a round trip; each type must stay under its budget (about 1.3x
    /// what the reference reaches on this signal), which catches any packing mistake (those give
    /// errors near 1) and any regression of the scale searches.
    #[test]
    fn round_trip_error_within_budget() {
        let x = signal(4096);
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        for (ty, budget) in [
            (GgmlType::Q2_K, 0.40),
            (GgmlType::Q3_K, 0.20),
            (GgmlType::Q4_K, 0.09),
            (GgmlType::Q5_K, 0.045),
            (GgmlType::Q6_K, 0.023),
            (GgmlType::Q8_K, 0.008),
        ] {
            let q = quantize_to_vec(ty, &x).unwrap();
            let y = dequantize_to_vec(ty, &q).unwrap();
            let err = (x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / x.len() as f32).sqrt() / rms;
            assert!(err < budget, "{ty}: relative rms error {err} over budget {budget}");
        }
    }

    #[test]
    fn zero_blocks_stay_zero() {
        for ty in [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_K] {
            let y = dequantize_to_vec(ty, &quantize_to_vec(ty, &[0.0; 256]).unwrap()).unwrap();
            assert!(y.iter().all(|&v| v == 0.0), "{ty}");
        }
    }
}
