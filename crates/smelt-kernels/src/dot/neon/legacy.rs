//! 32-element blocks times Q8_0/Q8_1 activations: per block, unpack to two 16-byte vectors,
//! widening multiply-add to 4 x i32, one multiply-add with the product of the scales.

use std::arch::aarch64::*;

use smelt_formats::quant::blocks::KVALUES_IQ4NL;

use super::{bit4_32, dot16, f16_at, ld_s8, ld_u8};

/// Sums `dw dx * isum` over blocks, where `block(i) -> (dw dx, 4 x i32 partial sums)`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn sum_blocks(nb: usize, block: impl Fn(usize) -> (f32, int32x4_t)) -> f32 {
    let mut acc0 = vdupq_n_f32(0.0);
    let mut acc1 = vdupq_n_f32(0.0);
    let mut i = 0;
    while i + 2 <= nb {
        let (d0, s0) = block(i);
        let (d1, s1) = block(i + 1);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(s0), d0);
        acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(s1), d1);
        i += 2;
    }
    if i < nb {
        let (d0, s0) = block(i);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(s0), d0);
    }
    vaddvq_f32(vaddq_f32(acc0, acc1))
}

/// 16 packed bytes -> (low nibbles: elements 0..16, high nibbles: elements 16..32).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    let v = ld_u8(p);
    (vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(v))
}

/// Dot of two byte halves (as signed) with the 32 activations at `y`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot32(lo: int8x16_t, hi: int8x16_t, y: *const u8) -> int32x4_t {
    vaddq_s32(dot16(lo, ld_s8(y)), dot16(hi, ld_s8(y.add(16))))
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q4_0_q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let eight = vdupq_n_s8(8);
    sum_blocks(n / 32, |i| {
        let (wb, xb) = (wp.add(18 * i), xp.add(34 * i));
        let (lo, hi) = nibbles(wb.add(2));
        let (lo, hi) = (vsubq_s8(vreinterpretq_s8_u8(lo), eight), vsubq_s8(vreinterpretq_s8_u8(hi), eight));
        (f16_at(wb) * f16_at(xb), dot32(lo, hi, xb.add(2)))
    })
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q4_1_q8_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let nb = n / 32;
    let mins: f32 = (0..nb).map(|i| f16_at(wp.add(20 * i + 2)) * f16_at(xp.add(36 * i + 2))).sum();
    mins + sum_blocks(nb, |i| {
        let (wb, xb) = (wp.add(20 * i), xp.add(36 * i));
        let (lo, hi) = nibbles(wb.add(4));
        (f16_at(wb) * f16_at(xb), dot32(vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi), xb.add(4)))
    })
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q5_0_q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let sixteen = vdupq_n_s8(16);
    sum_blocks(n / 32, |i| {
        let (wb, xb) = (wp.add(22 * i), xp.add(34 * i));
        let (h0, h1) = bit4_32(std::ptr::read_unaligned(wb.add(2) as *const u32));
        let (lo, hi) = nibbles(wb.add(6));
        let lo = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, h0)), sixteen);
        let hi = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(hi, h1)), sixteen);
        (f16_at(wb) * f16_at(xb), dot32(lo, hi, xb.add(2)))
    })
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q5_1_q8_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let nb = n / 32;
    let mins: f32 = (0..nb).map(|i| f16_at(wp.add(24 * i + 2)) * f16_at(xp.add(36 * i + 2))).sum();
    mins + sum_blocks(nb, |i| {
        let (wb, xb) = (wp.add(24 * i), xp.add(36 * i));
        let (h0, h1) = bit4_32(std::ptr::read_unaligned(wb.add(4) as *const u32));
        let (lo, hi) = nibbles(wb.add(8));
        let (lo, hi) = (vreinterpretq_s8_u8(vorrq_u8(lo, h0)), vreinterpretq_s8_u8(vorrq_u8(hi, h1)));
        (f16_at(wb) * f16_at(xb), dot32(lo, hi, xb.add(4)))
    })
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q8_0_q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    sum_blocks(n / 32, |i| {
        let (wb, xb) = (wp.add(34 * i), xp.add(34 * i));
        (f16_at(wb) * f16_at(xb), dot32(ld_s8(wb.add(2)), ld_s8(wb.add(18)), xb.add(2)))
    })
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q8_1_q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    sum_blocks(n / 32, |i| {
        let (wb, xb) = (wp.add(36 * i), xp.add(34 * i));
        (f16_at(wb) * f16_at(xb), dot32(ld_s8(wb.add(4)), ld_s8(wb.add(20)), xb.add(2)))
    })
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_iq4_nl_q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let grid = vld1q_s8(KVALUES_IQ4NL.as_ptr());
    sum_blocks(n / 32, |i| {
        let (wb, xb) = (wp.add(18 * i), xp.add(34 * i));
        let (lo, hi) = nibbles(wb.add(2));
        (f16_at(wb) * f16_at(xb), dot32(vqtbl1q_s8(grid, lo), vqtbl1q_s8(grid, hi), xb.add(2)))
    })
}
