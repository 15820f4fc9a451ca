//! smelt's 2:4 sparse blocks (Q4_0_S24, Q8_0_S24; layout in `smelt_formats::quant::sparse`)
//! times Q8Sum activations.
//!
//! Per 64-weight block: the 32 kept values are unpacked to 32 signed bytes (Q4: nibbles minus
//! 8), and the 32 activations at their positions are gathered with two `vpshufb`, one per
//! activation block: the positions (2 bits each) become byte indices within a 16-byte chunk
//! (`position + 4 * group`), and the block's kept order (A, C, B, D: see the format's docs)
//! puts every chunk in the 128-bit lane `vpshufb` reads it from. Then one signed integer dot
//! product to 8 x i32, whose lanes 0, 1, 4, 5 belong to the first half of the block (weight
//! scale `dw0`, activation block `x0`) and 2, 3, 6, 7 to the second, scaled by `dw0 dx0` /
//! `dw1 dx1` in one multiply and one FMA. Rows in pairs sharing the activation scales, the
//! weights prefetched.

use std::arch::x86_64::*;

use super::{f32_at, hsum, mul_sum_i8};

/// Q8Sum activation block: d f32 @0, s f32 @4, qs @8 (40 bytes); a sparse block spans two.
const XB: usize = 40;

/// The 32 activation bytes at the kept positions of one block, in kept order. `idx` is the
/// block's 8 bytes of positions, `xb` its first activation block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gather(idx: *const u8, xb: *const u8) -> __m256i {
    // Byte j of 64-bit quarter c = bits 2c..2c+2 of idx[j] = the position of kept 8c + j.
    let v = _mm256_set1_epi64x(std::ptr::read_unaligned(idx as *const i64));
    let pos = _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 2, 4, 6)), _mm256_set1_epi8(3));
    // Kept j of a quarter is in group j / 2 of its 16-byte chunk: `position + 4 (j / 2)`.
    // Quarters 0 and 2 (chunks A, B) read the first activation block, 1 and 3 (C, D) the
    // second; in the other block's shuffle their bytes get 0x80 (added: positions are < 16),
    // which makes `vpshufb` write zero.
    let group = 0x0C0C_0808_0404_0000i64;
    let zero = 0x8C8C_8888_8484_8080u64 as i64;
    let first = _mm256_add_epi8(pos, _mm256_setr_epi64x(group, zero, group, zero));
    let second = _mm256_add_epi8(pos, _mm256_setr_epi64x(zero, group, zero, group));
    let y0 = _mm256_shuffle_epi8(_mm256_loadu_si256(xb.add(8) as *const __m256i), first);
    let y1 = _mm256_shuffle_epi8(_mm256_loadu_si256(xb.add(XB + 8) as *const __m256i), second);
    _mm256_or_si256(y0, y1)
}

/// `dx0` in lanes 0, 1, 4, 5 and `dx1` in lanes 2, 3, 6, 7 (the two activation blocks at `xb`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn act_scales(xb: *const u8) -> __m256 {
    _mm256_blend_ps::<0b1100_1100>(_mm256_set1_ps(f32_at(xb)), _mm256_set1_ps(f32_at(xb.add(XB))))
}

/// The block's two f16 scales (at `wb`) as `[d0, d0, d1, d1, d0, d0, d1, d1]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weight_scales(wb: *const u8) -> __m256 {
    let d = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(wb as *const i32)));
    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d), _mm256_setr_epi32(0, 0, 1, 1, 0, 0, 1, 1))
}

/// `out[r] = sum_b (dw0 dx0 isum0 + dw1 dx1 isum1)` over the `n / 64` blocks of `bb` bytes of
/// row `r` (at byte `r * stride` of `w`); `block(wb, y)` is a weight block's integer dot product
/// with the gathered activations `y`. Rows go in pairs that share the activation scales; each
/// pair prefetches the next; a last odd row runs alone with two accumulators.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows(n: usize, w: &[u8], stride: usize, x: &[u8], out: &mut [f32], bb: usize, idx_at: usize, block: impl Fn(*const u8, __m256i) -> __m256i) {
    let nb = n / 64;
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let step = |acc: __m256, wb: *const u8, xb: *const u8, dx: __m256| {
        let s = block(wb, gather(wb.add(idx_at), xb));
        _mm256_fmadd_ps(_mm256_mul_ps(weight_scales(wb), dx), _mm256_cvtepi32_ps(s), acc)
    };
    let mut r = 0;
    while r + 2 <= out.len() {
        let (w0, w1) = (wp.add(r * stride), wp.add((r + 1) * stride));
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for i in 0..nb {
            let (b0, b1, xb) = (w0.add(bb * i), w1.add(bb * i), xp.add(2 * XB * i));
            super::prefetch_at(b0.add(2 * stride));
            super::prefetch_at(b1.add(2 * stride));
            let dx = act_scales(xb);
            acc0 = step(acc0, b0, xb, dx);
            acc1 = step(acc1, b1, xb, dx);
        }
        out[r] = hsum(acc0);
        out[r + 1] = hsum(acc1);
        r += 2;
    }
    if r < out.len() {
        let w0 = wp.add(r * stride);
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 2 <= nb {
            super::prefetch(w0.add(bb * i));
            let (x0, x1) = (xp.add(2 * XB * i), xp.add(2 * XB * (i + 1)));
            acc0 = step(acc0, w0.add(bb * i), x0, act_scales(x0));
            acc1 = step(acc1, w0.add(bb * (i + 1)), x1, act_scales(x1));
            i += 2;
        }
        if i < nb {
            let x0 = xp.add(2 * XB * i);
            acc0 = step(acc0, w0.add(bb * i), x0, act_scales(x0));
        }
        out[r] = hsum(_mm256_add_ps(acc0, acc1));
    }
}

/// Defines `dot_NAME` (one row) and `rows_NAME` (many rows) from a block dot product.
macro_rules! kernels {
    ($dot:ident, $rows:ident, $bb:expr, $idx:expr, |$wb:ident, $y:ident| $body:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $rows(n: usize, w: &[u8], stride: usize, x: &[u8], out: &mut [f32]) {
            rows(n, w, stride, x, out, $bb, $idx, |$wb: *const u8, $y: __m256i| $body)
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
            let mut out = [0.0f32];
            $rows(n, w, 0, x, &mut out);
            out[0]
        }
    };
}

// Block layouts (bytes): Q4_0_S24 d@0 (2 x f16) qs@4 idx@20 (28); Q8_0_S24 d@0 qs@4 idx@36 (44).

kernels!(dot_q4_0_s24, rows_q4_0_s24, 28, 20, |wb, y| {
    // Kept 0..16 in the low nibbles, 16..32 in the high ones.
    let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(wb.add(4) as *const __m128i));
    let q = _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0F));
    // sum (q - 8) y = sum q y - 8 sum y, in 16-bit pairs (|pair| <= 2 * 15 * 128).
    let p = _mm256_sub_epi16(_mm256_maddubs_epi16(q, y), _mm256_maddubs_epi16(_mm256_set1_epi8(8), y));
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
});

kernels!(dot_q8_0_s24, rows_q8_0_s24, 44, 36, |wb, y| mul_sum_i8(_mm256_loadu_si256(wb.add(4) as *const __m256i), y));
