//! IQ4_NL: 4-bit indices into a fixed non-linear grid ([`KVALUES_IQ4NL`]) with one f16 scale per
//! 32 elements. The grid is denser near zero, where most weights are, so it beats Q4_0 at the
//! same 4.5 bits per weight.
//!
//! Quantization (ggml's `quantize_iq4_nl` with `ntry = 7`, no importance weights): with weights
//! `w_i = x_i^2`, pick for candidate inverse scales `id = (k + v_0) / max`, `k = -7..=7`, the
//! nearest grid value of each `id * x_i`, and keep the scale `d = sum w q x / sum w q^2` that
//! maximises `(sum w q x)^2 / sum w q^2`; finally re-pick every index against that `d`.

use half::f16;

use super::blocks::*;
use super::search::GROUP_MAX_EPS;
use super::{read_blocks, write_blocks};

const NTRY: i32 = 7;

/// Index of the grid value nearest to `x` (ties go to the upper value).
fn best_index(x: f32) -> usize {
    let v = &KVALUES_IQ4NL;
    if x <= v[0] as f32 {
        return 0;
    }
    if x >= v[15] as f32 {
        return 15;
    }
    let (mut lo, mut hi) = (0usize, 15usize);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < v[mid] as f32 { hi = mid } else { lo = mid }
    }
    if x - (v[hi - 1] as f32) < (v[hi] as f32) - x { hi - 1 } else { hi }
}

pub(super) fn quantize_iq4_nl(src: &[f32], dst: &mut [u8]) {
    write_blocks(src, dst, QK, |x| {
        let w: [f32; QK] = std::array::from_fn(|j| x[j] * x[j]);
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            return BlockIq4Nl { d: f16::ZERO, qs: [0; QK / 2] };
        }
        let v0 = KVALUES_IQ4NL[0] as f32;
        let fit = |id: f32| {
            let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
            for j in 0..QK {
                let q = KVALUES_IQ4NL[best_index(id * x[j])] as f32;
                sumqx += w[j] * q * x[j];
                sumq2 += w[j] * q * q;
            }
            (sumqx, sumq2)
        };
        // Start on the positive side of the grid: d = -max / v_0, id = 1 / d.
        let (sumqx, sumq2) = fit(1.0 / (-max / v0));
        let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for k in -NTRY..=NTRY {
            let (sumqx, sumq2) = fit((k as f32 + v0) / max);
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let l: [u8; QK] = std::array::from_fn(|j| best_index(id * x[j]) as u8);
        BlockIq4Nl { d: f16::from_f32(d), qs: std::array::from_fn(|j| l[j] | (l[j + QK / 2] << 4)) }
    });
}

pub(super) fn dequantize_iq4_nl(src: &[u8], dst: &mut [f32]) {
    for (b, y) in read_blocks::<BlockIq4Nl>(src).zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (j, o) in y.iter_mut().enumerate() {
            let idx = if j < QK / 2 { b.qs[j] & 0xF } else { b.qs[j - QK / 2] >> 4 };
            *o = d * KVALUES_IQ4NL[idx as usize] as f32;
        }
    }
}
