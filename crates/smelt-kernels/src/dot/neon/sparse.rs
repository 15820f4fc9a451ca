//! smelt's 2:4 sparse blocks (layout in `smelt_formats::quant::sparse`) times Q8Sum activations
//! (see the AVX2 twin's docs): per 64-weight block, the activations at the kept positions are
//! gathered 8 at a time with `tbl` from their 16-byte chunk, multiplied with the kept values
//! (widening `smull`), and summed per half; then `dw0 dx0 isum0 + dw1 dx1 isum1`.

use std::arch::aarch64::*;

use super::{f16_at, f32_at, ld_s8};

/// Q8Sum activation block: d f32 @0, s f32 @4, qs @8 (40 bytes); a sparse block spans two.
const XB: usize = 40;

/// The 32 activations at the kept positions of the block whose positions are at `idx`, in kept
/// order, as (kept 0..16, kept 16..32).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn gather(idx: *const u8, xb: *const u8) -> (int8x16_t, int8x16_t) {
    let v = vcreate_u8(std::ptr::read_unaligned(idx as *const u64));
    let group = vcreate_u8(0x0C0C_0808_0404_0000);
    // Kept slot c (quarters in the order A, C, B, D): bits 2c..2c+2 of each byte, plus the group.
    let at = |c: i64| vadd_u8(vand_u8(vreinterpret_u8_u64(vshl_u64(vreinterpret_u64_u8(v), vdup_n_s64(-2 * c))), vdup_n_u8(3)), group);
    let (a, b) = (ld_s8(xb.add(8)), ld_s8(xb.add(24)));
    let (c, d) = (ld_s8(xb.add(XB + 8)), ld_s8(xb.add(XB + 24)));
    (vcombine_s8(vqtbl1_s8(a, at(0)), vqtbl1_s8(c, at(1))), vcombine_s8(vqtbl1_s8(b, at(2)), vqtbl1_s8(d, at(3))))
}

/// `sum_b (dw0 dx0 isum0 + dw1 dx1 isum1)`; `values(wb) -> (kept 0..16, kept 16..32)`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot(n: usize, w: &[u8], x: &[u8], bb: usize, idx_at: usize, values: impl Fn(*const u8) -> (int8x16_t, int8x16_t)) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut s = 0.0f32;
    for i in 0..n / 64 {
        let (wb, xb) = (wp.add(bb * i), xp.add(2 * XB * i));
        let (y0, y1) = gather(wb.add(idx_at), xb);
        let (q0, q1) = values(wb);
        // The low 8 bytes of each vector are chunks A and B (the first half), the high 8 C, D.
        let lo = vaddq_s32(vpaddlq_s16(vmull_s8(vget_low_s8(q0), vget_low_s8(y0))), vpaddlq_s16(vmull_s8(vget_low_s8(q1), vget_low_s8(y1))));
        let hi = vaddq_s32(vpaddlq_s16(vmull_high_s8(q0, y0)), vpaddlq_s16(vmull_high_s8(q1, y1)));
        let (h0, h1) = (vaddvq_s32(lo), vaddvq_s32(hi));
        s += f16_at(wb) * f32_at(xb) * h0 as f32 + f16_at(wb.add(2)) * f32_at(xb.add(XB)) * h1 as f32;
    }
    s
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q4_0_s24(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot(n, w, x, 28, 20, |wb| {
        let v = vld1q_u8(wb.add(4));
        let eight = vdupq_n_s8(8);
        (vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))), eight), vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)), eight))
    })
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q8_0_s24(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot(n, w, x, 44, 36, |wb| (ld_s8(wb.add(4)), ld_s8(wb.add(20))))
}
