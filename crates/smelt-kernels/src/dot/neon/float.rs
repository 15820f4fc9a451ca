//! F32, F16 and BF16 weights times f32 activations: 16 elements per step in four accumulators,
//! then 4 at a time, then a scalar tail.

use std::arch::aarch64::*;

#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_with(n: usize, w: &[u8], x: &[u8], esize: usize, load4: impl Fn(*const u8) -> float32x4_t, one: impl Fn(*const u8) -> f32) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr() as *const f32);
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let j = i + 4 * k;
            *a = vfmaq_f32(*a, load4(wp.add(j * esize)), vld1q_f32(xp.add(j)));
        }
        i += 16;
    }
    while i + 4 <= n {
        acc[0] = vfmaq_f32(acc[0], load4(wp.add(i * esize)), vld1q_f32(xp.add(i)));
        i += 4;
    }
    let mut s = vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])));
    while i < n {
        s += one(wp.add(i * esize)) * std::ptr::read_unaligned(xp.add(i));
        i += 1;
    }
    s
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_with(n, w, x, 4, |p| vld1q_f32(p as *const f32), |p| std::ptr::read_unaligned(p as *const f32))
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_f16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_with(n, w, x, 2, |p| vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p as *const u16))), |p| super::f16_at(p))
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_bf16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_with(
        n,
        w,
        x,
        2,
        |p| vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p as *const u16))),
        |p| f32::from_bits((std::ptr::read_unaligned(p as *const u16) as u32) << 16),
    )
}
