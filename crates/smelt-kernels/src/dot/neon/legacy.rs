//! 32-element blocks times Q8Sum activations (see the AVX2 twin's docs): per block, unpack to
//! two 16-byte vectors of `q`, widening multiply-add with the activation bytes to 4 x i32, one
//! multiply-add with `a dx`, and `c sx` for weights with an offset.

use std::arch::aarch64::*;

use smelt_formats::quant::blocks::KVALUES_IQ4NL;

use super::{bit4_32, dot16, f16_at, f32_at, ld_s8, ld_u8};

/// Q8Sum activation block: d f32 @0, s f32 @4, qs @8 (40 bytes).
const XB: usize = 40;

/// Sums `a dx isum + c sx` over blocks; `block(i) -> (a, 4 x i32 partial sums, c)`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn sum_blocks(nb: usize, xp: *const u8, block: impl Fn(usize) -> (f32, int32x4_t, f32)) -> f32 {
    let mut acc0 = vdupq_n_f32(0.0);
    let mut acc1 = vdupq_n_f32(0.0);
    let mut off = 0.0f32;
    let mut i = 0;
    while i + 2 <= nb {
        let (x0, x1) = (xp.add(XB * i), xp.add(XB * (i + 1)));
        let (a0, s0, c0) = block(i);
        let (a1, s1, c1) = block(i + 1);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(s0), a0 * f32_at(x0));
        acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(s1), a1 * f32_at(x1));
        off += c0 * f32_at(x0.add(4)) + c1 * f32_at(x1.add(4));
        i += 2;
    }
    if i < nb {
        let x0 = xp.add(XB * i);
        let (a0, s0, c0) = block(i);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(s0), a0 * f32_at(x0));
        off += c0 * f32_at(x0.add(4));
    }
    vaddvq_f32(vaddq_f32(acc0, acc1)) + off
}

/// 16 packed bytes -> (low nibbles: elements 0..16, high nibbles: elements 16..32).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    let v = ld_u8(p);
    (vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(v))
}

/// Dot of two 16-byte halves of `q` with the 32 activation bytes of block `xb`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot32(lo: int8x16_t, hi: int8x16_t, xb: *const u8) -> int32x4_t {
    vaddq_s32(dot16(lo, ld_s8(xb.add(8))), dot16(hi, ld_s8(xb.add(24))))
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn s8(v: uint8x16_t) -> int8x16_t {
    vreinterpretq_s8_u8(v)
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q4_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    sum_blocks(n / 32, xp, |i| {
        let wb = wp.add(18 * i);
        let (lo, hi) = nibbles(wb.add(2));
        let d = f16_at(wb);
        (d, dot32(s8(lo), s8(hi), xp.add(XB * i)), -8.0 * d)
    })
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q4_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    sum_blocks(n / 32, xp, |i| {
        let wb = wp.add(20 * i);
        let (lo, hi) = nibbles(wb.add(4));
        (f16_at(wb), dot32(s8(lo), s8(hi), xp.add(XB * i)), f16_at(wb.add(2)))
    })
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q5_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    sum_blocks(n / 32, xp, |i| {
        let wb = wp.add(22 * i);
        let (h0, h1) = bit4_32(std::ptr::read_unaligned(wb.add(2) as *const u32));
        let (lo, hi) = nibbles(wb.add(6));
        let d = f16_at(wb);
        (d, dot32(s8(vorrq_u8(lo, h0)), s8(vorrq_u8(hi, h1)), xp.add(XB * i)), -16.0 * d)
    })
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q5_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    sum_blocks(n / 32, xp, |i| {
        let wb = wp.add(24 * i);
        let (h0, h1) = bit4_32(std::ptr::read_unaligned(wb.add(4) as *const u32));
        let (lo, hi) = nibbles(wb.add(8));
        (f16_at(wb), dot32(s8(vorrq_u8(lo, h0)), s8(vorrq_u8(hi, h1)), xp.add(XB * i)), f16_at(wb.add(2)))
    })
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    sum_blocks(n / 32, xp, |i| {
        let wb = wp.add(34 * i);
        (f16_at(wb), dot32(ld_s8(wb.add(2)), ld_s8(wb.add(18)), xp.add(XB * i)), 0.0)
    })
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q8_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    sum_blocks(n / 32, xp, |i| {
        let wb = wp.add(36 * i);
        (f16_at(wb), dot32(ld_s8(wb.add(4)), ld_s8(wb.add(20)), xp.add(XB * i)), 0.0)
    })
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_iq4_nl(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let grid = vld1q_s8(KVALUES_IQ4NL.as_ptr());
    sum_blocks(n / 32, xp, |i| {
        let wb = wp.add(18 * i);
        let (lo, hi) = nibbles(wb.add(2));
        (f16_at(wb), dot32(vqtbl1q_s8(grid, lo), vqtbl1q_s8(grid, hi), xp.add(XB * i)), 0.0)
    })
}
