//! 32-element blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, IQ4_NL) times Q8_0/Q8_1 activations.
//! Per block: unpack the weights to 32 bytes, one integer dot product to 8 x i32, convert, and
//! one FMA with the product of the two scales. Two blocks per step into two accumulators.

use std::arch::x86_64::*;

use super::{bits_32, f16_at, hsum, load, mul_sum_i8, mul_sum_us8, nibbles_32};
use smelt_formats::quant::blocks::KVALUES_IQ4NL;

/// Runs `block(i) -> (scale, int sums)` over `nb` blocks, two accumulators, and adds `extra`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum_blocks(nb: usize, block: impl Fn(usize) -> (f32, __m256i)) -> f32 {
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 2 <= nb {
        let (d0, s0) = block(i);
        let (d1, s1) = block(i + 1);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), _mm256_cvtepi32_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1), _mm256_cvtepi32_ps(s1), acc1);
        i += 2;
    }
    if i < nb {
        let (d0, s0) = block(i);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0), _mm256_cvtepi32_ps(s0), acc0);
    }
    hsum(_mm256_add_ps(acc0, acc1))
}

// Block layouts (bytes): Q4_0 d@0 qs@2 (18); Q4_1 d@0 m@2 qs@4 (20); Q5_0 d@0 qh@2 qs@6 (22);
// Q5_1 d@0 m@2 qh@4 qs@8 (24); Q8_0 d@0 qs@2 (34); Q8_1 d@0 s@2 qs@4 (36); IQ4_NL as Q4_0.

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0_q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let off = _mm256_set1_epi8(8);
    sum_blocks(n / 32, |i| {
        let (wb, xb) = (wp.add(18 * i), xp.add(34 * i));
        let q = _mm256_sub_epi8(nibbles_32(wb.add(2)), off);
        (f16_at(wb) * f16_at(xb), mul_sum_i8(q, load(xb.add(2))))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1_q8_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let nb = n / 32;
    let mins: f32 = (0..nb).map(|i| f16_at(wp.add(20 * i + 2)) * f16_at(xp.add(36 * i + 2))).sum();
    mins + sum_blocks(nb, |i| {
        let (wb, xb) = (wp.add(20 * i), xp.add(36 * i));
        (f16_at(wb) * f16_at(xb), mul_sum_us8(nibbles_32(wb.add(4)), load(xb.add(4))))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_0_q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let high = _mm256_set1_epi8(0xF0u8 as i8);
    sum_blocks(n / 32, |i| {
        let (wb, xb) = (wp.add(22 * i), xp.add(34 * i));
        // q - 16 as a signed byte: the nibble where bit 4 is set, the nibble | 0xF0 (= nibble - 16)
        // where it is not.
        let bits = bits_32(std::ptr::read_unaligned(wb.add(2) as *const u32));
        let q = _mm256_or_si256(nibbles_32(wb.add(6)), _mm256_andnot_si256(bits, high));
        (f16_at(wb) * f16_at(xb), mul_sum_i8(q, load(xb.add(2))))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_1_q8_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let nb = n / 32;
    let b4 = _mm256_set1_epi8(0x10);
    let mins: f32 = (0..nb).map(|i| f16_at(wp.add(24 * i + 2)) * f16_at(xp.add(36 * i + 2))).sum();
    mins + sum_blocks(nb, |i| {
        let (wb, xb) = (wp.add(24 * i), xp.add(36 * i));
        let bits = bits_32(std::ptr::read_unaligned(wb.add(4) as *const u32));
        let q = _mm256_or_si256(nibbles_32(wb.add(8)), _mm256_and_si256(bits, b4));
        (f16_at(wb) * f16_at(xb), mul_sum_us8(q, load(xb.add(4))))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    sum_blocks(n / 32, |i| {
        let (wb, xb) = (wp.add(34 * i), xp.add(34 * i));
        (f16_at(wb) * f16_at(xb), mul_sum_i8(load(wb.add(2)), load(xb.add(2))))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_1_q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    sum_blocks(n / 32, |i| {
        let (wb, xb) = (wp.add(36 * i), xp.add(34 * i));
        (f16_at(wb) * f16_at(xb), mul_sum_i8(load(wb.add(4)), load(xb.add(2))))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_iq4_nl_q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let grid = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
    let grid = _mm256_set_m128i(grid, grid);
    sum_blocks(n / 32, |i| {
        let (wb, xb) = (wp.add(18 * i), xp.add(34 * i));
        let q = _mm256_shuffle_epi8(grid, nibbles_32(wb.add(2)));
        (f16_at(wb) * f16_at(xb), mul_sum_i8(q, load(xb.add(2))))
    })
}
