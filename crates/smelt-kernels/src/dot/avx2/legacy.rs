//! 32-element blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, IQ4_NL) times Q8Sum activations.
//!
//! Weights are `w_i = a q_i + c`; per block: unpack `q` to 32 bytes, one integer dot product
//! with the activation bytes to 8 x i32, convert, one FMA with `a dx`; the offset adds `c sx`
//! (the activation block's stored sum) in scalar. Unsigned `q` (Q4/Q5) multiply the signed
//! activations directly with `vpmaddubsw`; signed weights (Q8, IQ4_NL) move their sign onto the
//! activations first. Two blocks per step into two accumulators.

use std::arch::x86_64::*;

use super::{bits_32, f16_at, f32_at, hsum, mul_sum_i8, mul_sum_us8};
use smelt_formats::quant::blocks::KVALUES_IQ4NL;

/// Q8Sum activation block: d f32 @0, s f32 @4, qs @8 (40 bytes).
const XB: usize = 40;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn xq(xb: *const u8) -> __m256i {
    _mm256_loadu_si256(xb.add(8) as *const __m256i)
}

/// Sums `a dx isum + k c sx` over `nb` blocks; `block(i) -> (a, isum, c)`, `k` a constant
/// factor applied once at the end (Q4_0's offset is `-8 d`: `c = d`, `k = -8`). `OFFSET =
/// false` skips the `c sx` terms (weights without an offset). `wp`/`wb` locate the weight blocks
/// for the software prefetch.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum_blocks<const OFFSET: bool>(
    k: f32,nb: usize, xp: *const u8, wp: *const u8, wb: usize, block: impl Fn(usize) -> (f32, __m256i, f32)) -> f32 {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (mut off0, mut off1) = (0.0f32, 0.0f32);
    let mut i = 0;
    while i + 2 <= nb {
        super::prefetch(wp.add(wb * i));
        let (x0, x1) = (xp.add(XB * i), xp.add(XB * (i + 1)));
        let (a0, s0, c0) = block(i);
        let (a1, s1, c1) = block(i + 1);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(a0 * f32_at(x0)), _mm256_cvtepi32_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(a1 * f32_at(x1)), _mm256_cvtepi32_ps(s1), acc1);
        if OFFSET {
            off0 = c0.mul_add(f32_at(x0.add(4)), off0);
            off1 = c1.mul_add(f32_at(x1.add(4)), off1);
        }
        i += 2;
    }
    if i < nb {
        let x0 = xp.add(XB * i);
        let (a0, s0, c0) = block(i);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(a0 * f32_at(x0)), _mm256_cvtepi32_ps(s0), acc0);
        if OFFSET {
            off0 = c0.mul_add(f32_at(x0.add(4)), off0);
        }
    }
    hsum(_mm256_add_ps(acc0, acc1)) + k * (off0 + off1)
}

/// 16 bytes of packed nibbles -> 32 bytes: low nibbles (elements 0..16) then high nibbles.
/// One broadcast load, a per-lane shift (0 for the low half, 4 for the high half), one mask.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
    _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0F))
}

/// 0x10 in each byte whose bit is set in the u32 at `p` (the fifth bit of Q5 quants).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fifth_bits(p: *const u8) -> __m256i {
    _mm256_and_si256(bits_32(std::ptr::read_unaligned(p as *const u32)), _mm256_set1_epi8(0x10))
}

// Weight block layouts (bytes): Q4_0 d@0 qs@2 (18); Q4_1 d@0 m@2 qs@4 (20); Q5_0 d@0 qh@2 qs@6
// (22); Q5_1 d@0 m@2 qh@4 qs@8 (24); Q8_0 d@0 qs@2 (34); Q8_1 d@0 s@2 qs@4 (36); IQ4_NL as Q4_0.

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    sum_blocks::<true>(-8.0, n / 32, xp, wp, 18, |i| {
        let wb = wp.add(18 * i);
        let d = f16_at(wb);
        (d, mul_sum_us8(nibbles(wb.add(2)), xq(xp.add(XB * i))), d)
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    sum_blocks::<true>(1.0, n / 32, xp, wp, 20, |i| {
        let wb = wp.add(20 * i);
        (f16_at(wb), mul_sum_us8(nibbles(wb.add(4)), xq(xp.add(XB * i))), f16_at(wb.add(2)))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    sum_blocks::<true>(-16.0, n / 32, xp, wp, 22, |i| {
        let wb = wp.add(22 * i);
        let q = _mm256_or_si256(nibbles(wb.add(6)), fifth_bits(wb.add(2)));
        let d = f16_at(wb);
        (d, mul_sum_us8(q, xq(xp.add(XB * i))), d)
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    sum_blocks::<true>(1.0, n / 32, xp, wp, 24, |i| {
        let wb = wp.add(24 * i);
        let q = _mm256_or_si256(nibbles(wb.add(8)), fifth_bits(wb.add(4)));
        (f16_at(wb), mul_sum_us8(q, xq(xp.add(XB * i))), f16_at(wb.add(2)))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    sum_blocks::<false>(0.0, n / 32, xp, wp, 34, |i| {
        let wb = wp.add(34 * i);
        (f16_at(wb), mul_sum_i8(_mm256_loadu_si256(wb.add(2) as *const __m256i), xq(xp.add(XB * i))), 0.0)
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    sum_blocks::<false>(0.0, n / 32, xp, wp, 36, |i| {
        let wb = wp.add(36 * i);
        (f16_at(wb), mul_sum_i8(_mm256_loadu_si256(wb.add(4) as *const __m256i), xq(xp.add(XB * i))), 0.0)
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_iq4_nl(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let grid = _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
    sum_blocks::<false>(0.0, n / 32, xp, wp, 18, |i| {
        let wb = wp.add(18 * i);
        let q = _mm256_shuffle_epi8(grid, nibbles(wb.add(2)));
        (f16_at(wb), mul_sum_i8(q, xq(xp.add(XB * i))), 0.0)
    })
}
