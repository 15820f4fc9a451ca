//! AVX-512 (F, BW, VL, VNNI) forms of the tile kernel of the unsigned 32-element blocks (Q4_0,
//! Q4_1, Q5_0, Q5_1): several activation rows against many weight rows, the inner loop of
//! batched decoding. Used on top of the AVX2 level where the CPU has these extensions
//! ([`crate::cpu::avx512`]); the AVX2 tiles of [`super::avx2`] stay the form for other CPUs and
//! the scalar twins the oracle of both.
//!
//! Weights are `w_i = a q_i + c` per block, activations `x_i = dx y_i` (Q8Sum: `dx` f32, the
//! block's sum `sx = dx sum y` f32, `y` 32 signed bytes). For a weight row and activation row `j`:
//!
//! ```text
//! dot_j = sum_b a_b dx_bj (q_b . y_bj) + k sum_b c_b sx_bj
//! ```
//!
//! Two blocks share one 512-bit register: lanes 0-7 hold block `b`, lanes 8-15 block `b + 1`.
//! Per block pair and activation row that is one `vpdpbusd` (64 unsigned x signed byte products
//! summed in fours to 16 x i32), one conversion, one multiply (`[a_b x8 | a_b+1 x8]` times the
//! activation scales `[dx_bj x8 | dx_b+1,j x8]`, laid out once per call) and one FMA: half the
//! instructions of the AVX2 tile's two blocks, and no byte-pair saturation (VNNI sums in 32 bits).
//! The offsets `c sx` of all activation rows are one FMA per block pair (activation row `j` in
//! lanes `j` and `8 + j`). The weight blocks are unpacked once for all activation rows.

// Every function here is `unsafe` with `#[target_feature]`; they are only reached through the
// kernel table after run-time detection (`TileFn` and `RowsFn` say what the callers guarantee).
#![allow(clippy::missing_safety_doc, unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;
use std::cell::RefCell;

/// Q8Sum activation block: d f32 @0, s f32 @4, qs @8 (40 bytes).
const XB: usize = 40;

/// Most activation rows [`tile`] takes in one pass (eight accumulators; the 32 registers hold
/// them with the unpacked weights and constants).
const MAX_MX: usize = 8;

thread_local! {
    /// Per call: the activation rows' quants, packed (32 bytes a block, rows one after the other),
    /// then their scales and sums laid out per block pair (see [`tile`]).
    static PACKED: RefCell<(Vec<u8>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

// Not the AVX2 module's `f16_at`: its inline assembly, inlined here, made one-sequence decoding
// slower (6.4-7.6 against 5.9-6.4 ms a step, three pairs).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = std::ptr::read_unaligned(p as *const u16);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn f32_at(p: *const u8) -> f32 {
    std::ptr::read_unaligned(p as *const f32)
}

/// `[u x8 | v x8]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pair(u: f32, v: f32) -> __m512 {
    // (64-bit lanes: `insertf32x8` would need AVX-512 DQ.)
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castps_pd(_mm512_set1_ps(u)), _mm256_castps_pd(_mm256_set1_ps(v))))
}

/// The 16 nibble bytes at `p` and at `p2`, unpacked to 64 bytes: lanes 0-31 the first block
/// (low nibbles, elements 0..16, then high nibbles), lanes 32-63 the second.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn nibbles2(p: *const u8, p2: *const u8) -> __m512i {
    let lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
    let hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(p2 as *const __m128i));
    let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
    _mm512_and_si512(_mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4)), _mm512_set1_epi8(0x0F))
}

/// 0x10 in each byte whose bit is set in the u32 at `p` (block 1) and at `p2` (block 2): the fifth
/// bit of Q5 quants, in the lane order of [`nibbles2`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn fifth_bits2(p: *const u8, p2: *const u8) -> __m512i {
    let bits = std::ptr::read_unaligned(p as *const u32) as u64 | ((std::ptr::read_unaligned(p2 as *const u32) as u64) << 32);
    _mm512_maskz_mov_epi8(bits, _mm512_set1_epi8(0x10))
}

/// `outs[j][r] = dot(row r of w, xs[j])` for `MX <= 8` activation rows (see the module docs).
/// `unpack(wb, wb2) -> (a, q, c)` reads two weight blocks: `[a x8 | a2 x8]`, their 64 quants as
/// unsigned bytes and `[c x8 | c2 x8]`. An odd last block is paired with itself, its second half
/// weighted by zero.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const OFFSET: bool, const MX: usize>(
    k: f32,
    bb: usize,
    n: usize,
    w: &[u8],
    stride: usize,
    xs: &[&[u8]],
    outs: &mut [&mut [f32]],
    unpack: impl Fn(*const u8, *const u8) -> (__m512, __m512i, __m512),
) {
    let nb = n / 32;
    let np = nb.div_ceil(2);
    PACKED.with(|packed| {
        let (ys, sc) = &mut *packed.borrow_mut();
        // ys: row j's block b at 32 (j nb2 + b), nb2 = 2 np (an odd last block repeated).
        // sc: per pair p, MX vectors [dx_2p,j x8 | dx_2p+1,j x8], then one [sx_2p,j in lane j |
        // sx_2p+1,j in lane 8 + j].
        let nb2 = 2 * np;
        ys.resize(MX * nb2 * 32, 0);
        sc.resize(np * (MX + 1) * 16, 0.0);
        for (j, x) in xs.iter().enumerate().take(MX) {
            let xp = x.as_ptr();
            for b in 0..nb2 {
                let src = xp.add(XB * b.min(nb - 1));
                std::ptr::copy_nonoverlapping(src.add(8), ys.as_mut_ptr().add(32 * (j * nb2 + b)), 32);
            }
            for p in 0..np {
                let (b0, b1) = (2 * p, (2 * p + 1).min(nb - 1));
                let base = p * (MX + 1) * 16;
                let (d0, d1) = (f32_at(xp.add(XB * b0)), f32_at(xp.add(XB * b1)));
                sc[base + 16 * j..base + 16 * j + 8].fill(d0);
                sc[base + 16 * j + 8..base + 16 * j + 16].fill(d1);
                let s = base + 16 * MX;
                sc[s + j] = f32_at(xp.add(XB * b0 + 4));
                sc[s + 8 + j] = if b1 == b0 { 0.0 } else { f32_at(xp.add(XB * b1 + 4)) };
            }
        }
        let (yp, sp) = (ys.as_ptr(), sc.as_ptr());
        let odd_mask: __mmask16 = if nb % 2 == 1 { 0x00FF } else { 0xFFFF };
        let wp = w.as_ptr();
        for r in 0..outs[0].len() {
            let w0 = wp.add(r * stride);
            let mut acc = [_mm512_setzero_ps(); MX];
            let mut off = _mm512_setzero_ps();
            for p in 0..np {
                let (b0, b1) = (2 * p, (2 * p + 1).min(nb - 1));
                // The same place a few rows on (a hint: never dereferenced).
                _mm_prefetch::<_MM_HINT_T0>(w0.wrapping_add(ROWS_AHEAD * stride + bb * b0) as *const i8);
                let (mut a, q, c) = unpack(w0.add(bb * b0), w0.add(bb * b1));
                if p + 1 == np {
                    a = _mm512_maskz_mov_ps(odd_mask, a);
                }
                let s = sp.add(p * (MX + 1) * 16);
                if OFFSET {
                    off = _mm512_fmadd_ps(c, _mm512_loadu_ps(s.add(16 * MX)), off);
                }
                for (j, acc) in acc.iter_mut().enumerate() {
                    let y = _mm512_loadu_si512(yp.add(32 * (j * 2 * np + 2 * p)) as *const __m512i);
                    let isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, y);
                    let scale = _mm512_mul_ps(a, _mm512_loadu_ps(s.add(16 * j)));
                    *acc = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(isum), *acc);
                }
            }
            let mut offs = [0.0f32; 16];
            _mm512_storeu_ps(offs.as_mut_ptr(), off);
            for (j, acc) in acc.iter().enumerate() {
                outs[j][r] = _mm512_reduce_add_ps(*acc) + k * (offs[j] + offs[8 + j]);
            }
        }
    });
}

/// Rows this far ahead are prefetched by [`tile`] and [`rows`] (measured on SmolLM2: one row
/// ahead left both kernels waiting on memory).
const ROWS_AHEAD: usize = 4;

/// `out[r] = dot(row r of w, x)` for one activation row: each row's sum is formed exactly as
/// [`tile`] forms it (the same vectors, operations and order), so a row gives the same bits
/// whether it is decoded alone or beside other sequences. Two weight rows a step share the
/// activation loads and scales; the weights are prefetched [`ROWS_AHEAD`] rows ahead.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows<const OFFSET: bool>(
    k: f32,
    bb: usize,
    n: usize,
    w: &[u8],
    stride: usize,
    x: &[u8],
    out: &mut [f32],
    unpack: impl Fn(*const u8, *const u8) -> (__m512, __m512i, __m512),
) {
    let nb = n / 32;
    let np = nb.div_ceil(2);
    let odd_mask: __mmask16 = if nb % 2 == 1 { 0x00FF } else { 0xFFFF };
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let finish = |acc: __m512, off: __m512| {
        let mut offs = [0.0f32; 16];
        _mm512_storeu_ps(offs.as_mut_ptr(), off);
        _mm512_reduce_add_ps(acc) + k * (offs[0] + offs[8])
    };
    let mut r = 0;
    while r < out.len() {
        let two = r + 1 < out.len();
        let w0 = wp.add(r * stride);
        let w1 = if two { w0.add(stride) } else { w0 };
        let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let (mut off0, mut off1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for p in 0..np {
            let (b0, b1) = (2 * p, (2 * p + 1).min(nb - 1));
            _mm_prefetch::<_MM_HINT_T0>(w0.wrapping_add(ROWS_AHEAD * stride + bb * b0) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(w1.wrapping_add(ROWS_AHEAD * stride + bb * b0) as *const i8);
            let (x0, x1) = (xp.add(XB * b0), xp.add(XB * b1));
            let y = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_loadu_si256(x0.add(8) as *const __m256i)), _mm256_loadu_si256(x1.add(8) as *const __m256i));
            let d = pair(f32_at(x0), f32_at(x1));
            let sx = _mm512_zextps128_ps512(_mm_set_ss(f32_at(x0.add(4))));
            let sx = _mm512_mask_mov_ps(sx, 0x0100, _mm512_set1_ps(if b1 == b0 { 0.0 } else { f32_at(x1.add(4)) }));
            let last = p + 1 == np;
            let (mut a0, q0, c0) = unpack(w0.add(bb * b0), w0.add(bb * b1));
            let (mut a1, q1, c1) = unpack(w1.add(bb * b0), w1.add(bb * b1));
            if last {
                a0 = _mm512_maskz_mov_ps(odd_mask, a0);
                a1 = _mm512_maskz_mov_ps(odd_mask, a1);
            }
            if OFFSET {
                off0 = _mm512_fmadd_ps(c0, sx, off0);
                off1 = _mm512_fmadd_ps(c1, sx, off1);
            }
            let s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q0, y);
            let s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q1, y);
            acc0 = _mm512_fmadd_ps(_mm512_mul_ps(a0, d), _mm512_cvtepi32_ps(s0), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_mul_ps(a1, d), _mm512_cvtepi32_ps(s1), acc1);
        }
        out[r] = finish(acc0, off0);
        if two {
            out[r + 1] = finish(acc1, off1);
        }
        r += 2;
    }
}

/// Defines `tile_NAME` (see [`tile`]; 1 to [`MAX_MX`] activation rows, more in groups of eight)
/// and `rows_NAME` (see [`rows`]) from a two-block unpacking.
macro_rules! tiles {
    ($tile:ident, $rows:ident, $offset:literal, $k:expr, $bb:expr, |$wb:ident, $wb2:ident| $unpack:expr) => {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        pub unsafe fn $rows(n: usize, w: &[u8], stride: usize, x: &[u8], out: &mut [f32]) {
            rows::<$offset>($k, $bb, n, w, stride, x, out, |$wb: *const u8, $wb2: *const u8| $unpack)
        }

        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        pub unsafe fn $tile(n: usize, w: &[u8], stride: usize, xs: &[&[u8]], outs: &mut [&mut [f32]]) {
            let u = |$wb: *const u8, $wb2: *const u8| $unpack;
            for (xs, outs) in xs.chunks(MAX_MX).zip(outs.chunks_mut(MAX_MX)) {
                match xs.len() {
                    1 => tile::<$offset, 1>($k, $bb, n, w, stride, xs, outs, u),
                    2 => tile::<$offset, 2>($k, $bb, n, w, stride, xs, outs, u),
                    3 => tile::<$offset, 3>($k, $bb, n, w, stride, xs, outs, u),
                    4 => tile::<$offset, 4>($k, $bb, n, w, stride, xs, outs, u),
                    5 => tile::<$offset, 5>($k, $bb, n, w, stride, xs, outs, u),
                    6 => tile::<$offset, 6>($k, $bb, n, w, stride, xs, outs, u),
                    7 => tile::<$offset, 7>($k, $bb, n, w, stride, xs, outs, u),
                    _ => tile::<$offset, 8>($k, $bb, n, w, stride, xs, outs, u),
                }
            }
        }
    };
}

// Weight block layouts (bytes): Q4_0 d@0 qs@2 (18); Q4_1 d@0 m@2 qs@4 (20); Q5_0 d@0 qh@2 qs@6
// (22); Q5_1 d@0 m@2 qh@4 qs@8 (24).

tiles!(tile_q4_0, rows_q4_0, true, -8.0, 18, |wb, wb2| {
    let a = pair(f16_at(wb), f16_at(wb2));
    (a, nibbles2(wb.add(2), wb2.add(2)), a)
});

tiles!(tile_q4_1, rows_q4_1, true, 1.0, 20, |wb, wb2| {
    (pair(f16_at(wb), f16_at(wb2)), nibbles2(wb.add(4), wb2.add(4)), pair(f16_at(wb.add(2)), f16_at(wb2.add(2))))
});

tiles!(tile_q5_0, rows_q5_0, true, -16.0, 22, |wb, wb2| {
    let a = pair(f16_at(wb), f16_at(wb2));
    (a, _mm512_or_si512(nibbles2(wb.add(6), wb2.add(6)), fifth_bits2(wb.add(2), wb2.add(2))), a)
});

tiles!(tile_q5_1, rows_q5_1, true, 1.0, 24, |wb, wb2| {
    let q = _mm512_or_si512(nibbles2(wb.add(8), wb2.add(8)), fifth_bits2(wb.add(4), wb2.add(4)));
    (pair(f16_at(wb), f16_at(wb2)), q, pair(f16_at(wb.add(2)), f16_at(wb2.add(2))))
});

