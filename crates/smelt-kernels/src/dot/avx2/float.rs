//! F32, F16 and BF16 weights times f32 activations: fused multiply-add over 32 elements per
//! step in four accumulators, then 8 at a time, then a scalar tail.

use std::arch::x86_64::*;

use super::hsum;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_with(n: usize, w: &[u8], x: &[u8], esize: usize, load: impl Fn(*const u8) -> __m256, one: impl Fn(*const u8) -> f32) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr() as *const f32);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let j = i + 8 * k;
            *a = _mm256_fmadd_ps(load(wp.add(j * esize)), _mm256_loadu_ps(xp.add(j)), *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(load(wp.add(i * esize)), _mm256_loadu_ps(xp.add(i)), acc[0]);
        i += 8;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut s = hsum(v);
    while i < n {
        s += one(wp.add(i * esize)) * std::ptr::read_unaligned(xp.add(i));
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_with(n, w, x, 4, |p| _mm256_loadu_ps(p as *const f32), |p| std::ptr::read_unaligned(p as *const f32))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_with(n, w, x, 2, |p| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)), |p| super::f16_at(p))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_bf16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_with(
        n,
        w,
        x,
        2,
        |p| _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)), 16)),
        |p| f32::from_bits((std::ptr::read_unaligned(p as *const u16) as u32) << 16),
    )
}
