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

/// `out[r] = sum_b (a_rb dx_b isum_rb) + k sum_b c_rb sx_b` for `out.len()` rows of `n` weights
/// (row `r` at byte `r * stride` of `w`) against one Q8Sum activation row. `block(wb, y) ->
/// (a, isum, c)` dots one weight block at `wb` with the 32 activation bytes `y`; `k` is a
/// constant applied to the offsets once at the end (Q4_0's offset is `-8 d`: `c = d`,
/// `k = -8`), and `OFFSET = false` skips them. Rows go in pairs so that each activation block
/// (bytes, scale, sum) is loaded once for two rows and the per-row cost is shared; a last odd
/// row runs alone with two accumulators. The weights are prefetched ahead.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows<const OFFSET: bool>(
    k: f32,
    bb: usize,
    n: usize,
    w: &[u8],
    stride: usize,
    x: &[u8],
    out: &mut [f32],
    block: impl Fn(*const u8, __m256i) -> (f32, __m256i, f32),
) {
    let nb = n / 32;
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut r = 0;
    while r + 2 <= out.len() {
        let (w0, w1) = (wp.add(r * stride), wp.add((r + 1) * stride));
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (mut off0, mut off1) = (0.0f32, 0.0f32);
        for i in 0..nb {
            if i % 2 == 0 {
                // The same place in the next pair of rows: exactly one pair ahead.
                super::prefetch_at(w0.add(2 * stride + bb * i));
                super::prefetch_at(w1.add(2 * stride + bb * i));
            }
            let xb = xp.add(XB * i);
            let (y, dx) = (xq(xb), f32_at(xb));
            let (a0, s0, c0) = block(w0.add(bb * i), y);
            let (a1, s1, c1) = block(w1.add(bb * i), y);
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(a0 * dx), _mm256_cvtepi32_ps(s0), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(a1 * dx), _mm256_cvtepi32_ps(s1), acc1);
            if OFFSET {
                let sx = f32_at(xb.add(4));
                off0 = c0.mul_add(sx, off0);
                off1 = c1.mul_add(sx, off1);
            }
        }
        out[r] = hsum(acc0) + k * off0;
        out[r + 1] = hsum(acc1) + k * off1;
        r += 2;
    }
    if r < out.len() {
        let w0 = wp.add(r * stride);
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (mut off0, mut off1) = (0.0f32, 0.0f32);
        let mut i = 0;
        while i + 2 <= nb {
            super::prefetch(w0.add(bb * i));
            let (x0, x1) = (xp.add(XB * i), xp.add(XB * (i + 1)));
            let (a0, s0, c0) = block(w0.add(bb * i), xq(x0));
            let (a1, s1, c1) = block(w0.add(bb * (i + 1)), xq(x1));
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
            let (a0, s0, c0) = block(w0.add(bb * i), xq(x0));
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(a0 * f32_at(x0)), _mm256_cvtepi32_ps(s0), acc0);
            if OFFSET {
                off0 = c0.mul_add(f32_at(x0.add(4)), off0);
            }
        }
        out[r] = hsum(_mm256_add_ps(acc0, acc1)) + k * (off0 + off1);
    }
}

/// Weight rows this far ahead are prefetched by [`tile`] (measured on SmolLM2 decoding 4 and 8
/// sequences: with one row ahead the tile waited on memory, 1.14-1.21x slower).
const TILE_AHEAD: usize = 4;

/// `outs[j][r] = dot(row r of w, xs[j])` for `MX <= 8` activation rows at once (several
/// sequences decoded together): each weight block is unpacked once (`quants(wb)`, its 32 quants
/// as bytes) and multiplied with every activation row (`dot(q, y)`, 8 x i32), so the unpacking
/// and the weight loads are paid once per `MX` rows instead of once per row.
///
/// Per weight row, a first pass over its blocks reads their scales (`scales(wb) -> (a, c)`, the
/// block's scale and offset), stores `a dx_j` for every block and row (one 8-wide multiply with
/// the activation scales, gathered block by block into `[dx_0..dx_7]`, `[sx_0..sx_7]` once per
/// call), sums the offsets `c sx_j` (one FMA per block) and prefetches the row [`TILE_AHEAD`]
/// rows on. The second pass broadcasts `a dx_j` from that buffer (a load: no shuffles, no index
/// registers) into one accumulator per activation row (8 + 4 of the 16 AVX2 registers). Each
/// row's sum is formed as with any other `MX`, so a row's result does not depend on the rows
/// beside it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const OFFSET: bool, const MX: usize>(
    k: f32,
    bb: usize,
    n: usize,
    w: &[u8],
    stride: usize,
    xs: &[&[u8]],
    outs: &mut [&mut [f32]],
    scales: impl Fn(*const u8) -> (f32, f32),
    quants: impl Fn(*const u8) -> __m256i,
    dot: impl Fn(__m256i, __m256i) -> __m256i,
) {
    let nb = n / 32;
    let wp = w.as_ptr();
    let mut xp = [std::ptr::null::<u8>(); MX];
    for (p, x) in xp.iter_mut().zip(xs) {
        *p = x.as_ptr();
    }
    // (dx, sx) of every activation row, block by block: [block][0..8] then [block][8..16].
    let mut xsc = vec![0.0f32; nb * 16];
    for (i, sc) in xsc.chunks_exact_mut(16).enumerate() {
        for (j, &x) in xp.iter().enumerate() {
            sc[j] = f32_at(x.add(XB * i));
            sc[8 + j] = f32_at(x.add(XB * i + 4));
        }
    }
    let sp = xsc.as_ptr();
    // a dx_j of the current weight row: [block][0..8].
    let mut adx = vec![0.0f32; nb * 8];
    let ap = adx.as_mut_ptr();
    for r in 0..outs[0].len() {
        let w0 = wp.add(r * stride);
        let mut off = _mm256_setzero_ps();
        for i in 0..nb {
            if i % 2 == 0 {
                // The same place a few rows on (a hint: never dereferenced).
                super::prefetch_at(w0.wrapping_add(TILE_AHEAD * stride + bb * i));
            }
            let (a, c) = scales(w0.add(bb * i));
            _mm256_storeu_ps(ap.add(8 * i), _mm256_mul_ps(_mm256_set1_ps(a), _mm256_loadu_ps(sp.add(16 * i))));
            if OFFSET {
                off = _mm256_fmadd_ps(_mm256_set1_ps(c), _mm256_loadu_ps(sp.add(16 * i + 8)), off);
            }
        }
        let mut acc = [_mm256_setzero_ps(); MX];
        for i in 0..nb {
            let q = quants(w0.add(bb * i));
            for j in 0..MX {
                let s = dot(q, xq(xp[j].add(XB * i)));
                acc[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*ap.add(8 * i + j)), _mm256_cvtepi32_ps(s), acc[j]);
            }
        }
        let mut offs = [0.0f32; 8];
        _mm256_storeu_ps(offs.as_mut_ptr(), off);
        for j in 0..MX {
            outs[j][r] = hsum(acc[j]) + k * offs[j];
        }
    }
}

/// Defines `tile_NAME` (see [`tile`]) from a block unpacking and a byte dot product, for 1 to
/// [`crate::dot::TILE_X`] activation rows.
macro_rules! tiles {
    ($tile:ident, $offset:literal, $k:expr, $bb:expr, scales |$sb:ident| $scales:expr, quants |$qb:ident| $quants:expr, $dot:ident) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $tile(n: usize, w: &[u8], stride: usize, xs: &[&[u8]], outs: &mut [&mut [f32]]) {
            let sc = |$sb: *const u8| $scales;
            let u = |$qb: *const u8| $quants;
            // Up to eight activation rows a pass (eight accumulators of the 16 AVX2 registers).
            for (xs, outs) in xs.chunks(8).zip(outs.chunks_mut(8)) {
                match xs.len() {
                    1 => tile::<$offset, 1>($k, $bb, n, w, stride, xs, outs, sc, u, |q, y| $dot(q, y)),
                    2 => tile::<$offset, 2>($k, $bb, n, w, stride, xs, outs, sc, u, |q, y| $dot(q, y)),
                    3 => tile::<$offset, 3>($k, $bb, n, w, stride, xs, outs, sc, u, |q, y| $dot(q, y)),
                    4 => tile::<$offset, 4>($k, $bb, n, w, stride, xs, outs, sc, u, |q, y| $dot(q, y)),
                    5 => tile::<$offset, 5>($k, $bb, n, w, stride, xs, outs, sc, u, |q, y| $dot(q, y)),
                    6 => tile::<$offset, 6>($k, $bb, n, w, stride, xs, outs, sc, u, |q, y| $dot(q, y)),
                    7 => tile::<$offset, 7>($k, $bb, n, w, stride, xs, outs, sc, u, |q, y| $dot(q, y)),
                    _ => tile::<$offset, 8>($k, $bb, n, w, stride, xs, outs, sc, u, |q, y| $dot(q, y)),
                }
            }
        }
    };
}

/// Defines `dot_NAME` (one row) and `rows_NAME` (many rows) from a block dot product.
macro_rules! kernels {
    ($dot:ident, $rows:ident, $offset:literal, $k:expr, $bb:expr, |$wb:ident, $y:ident| $body:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $rows(n: usize, w: &[u8], stride: usize, x: &[u8], out: &mut [f32]) {
            rows::<$offset>($k, $bb, n, w, stride, x, out, |$wb: *const u8, $y: __m256i| $body)
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $dot(n: usize, w: &[u8], x: &[u8]) -> f32 {
            let mut out = [0.0f32];
            $rows(n, w, 0, x, &mut out);
            out[0]
        }
    };
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

kernels!(dot_q4_0, rows_q4_0, true, -8.0, 18, |wb, y| {
    let d = f16_at(wb);
    (d, mul_sum_us8(nibbles(wb.add(2)), y), d)
});

kernels!(dot_q4_1, rows_q4_1, true, 1.0, 20, |wb, y| (f16_at(wb), mul_sum_us8(nibbles(wb.add(4)), y), f16_at(wb.add(2))));

kernels!(dot_q5_0, rows_q5_0, true, -16.0, 22, |wb, y| {
    let d = f16_at(wb);
    (d, mul_sum_us8(_mm256_or_si256(nibbles(wb.add(6)), fifth_bits(wb.add(2))), y), d)
});

kernels!(dot_q5_1, rows_q5_1, true, 1.0, 24, |wb, y| {
    let q = _mm256_or_si256(nibbles(wb.add(8)), fifth_bits(wb.add(4)));
    (f16_at(wb), mul_sum_us8(q, y), f16_at(wb.add(2)))
});

kernels!(dot_q8_0, _rows_q8_0, false, 0.0, 34, |wb, y| (f16_at(wb), mul_sum_i8(_mm256_loadu_si256(wb.add(2) as *const __m256i), y), 0.0));

kernels!(dot_q8_1, _rows_q8_1, false, 0.0, 36, |wb, y| (f16_at(wb), mul_sum_i8(_mm256_loadu_si256(wb.add(4) as *const __m256i), y), 0.0));

kernels!(dot_iq4_nl, rows_iq4_nl, false, 0.0, 18, |wb, y| {
    let grid = _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
    (f16_at(wb), mul_sum_i8(_mm256_shuffle_epi8(grid, nibbles(wb.add(2))), y), 0.0)
});

tiles!(tile_q4_0, true, -8.0, 18, scales |wb| { let d = f16_at(wb); (d, d) }, quants |wb| nibbles(wb.add(2)), mul_sum_us8);

tiles!(tile_q4_1, true, 1.0, 20, scales |wb| (f16_at(wb), f16_at(wb.add(2))), quants |wb| nibbles(wb.add(4)), mul_sum_us8);

tiles!(tile_q5_0, true, -16.0, 22, scales |wb| { let d = f16_at(wb); (d, d) }, quants |wb| _mm256_or_si256(nibbles(wb.add(6)), fifth_bits(wb.add(2))), mul_sum_us8);

tiles!(tile_q5_1, true, 1.0, 24, scales |wb| (f16_at(wb), f16_at(wb.add(2))), quants |wb| _mm256_or_si256(nibbles(wb.add(8)), fifth_bits(wb.add(4))), mul_sum_us8);

tiles!(tile_q8_0, false, 0.0, 34, scales |wb| (f16_at(wb), 0.0), quants |wb| _mm256_loadu_si256(wb.add(2) as *const __m256i), mul_sum_i8);

tiles!(tile_iq4_nl, false, 0.0, 18, scales |wb| (f16_at(wb), 0.0), quants |wb| {
    let grid = _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
    _mm256_shuffle_epi8(grid, nibbles(wb.add(2)))
}, mul_sum_i8);
