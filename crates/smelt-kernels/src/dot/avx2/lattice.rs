//! The lattice IQ types times Q8_K.
//!
//! IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S: per 32 weights, the grid points' magnitudes (4
//! or 8 unsigned bytes each, looked up by index) fill one register, the 32 sign bits become a
//! byte mask that is moved onto the activations (`vpsignb`), one `vpmaddubsw` multiplies, and
//! `vpmaddwd` applies the runs' integer scale codes `2 l + 1` (16 weights per code for IQ2_XS
//! and IQ2_S, 32 for the others). The codes' common factor (1/8 for IQ2, 1/4 for IQ3_XXS, 1 for
//! IQ3_S) joins the block scales once per block. IQ4_XS: the 4-bit indices go through the
//! IQ4_NL grid with `vpshufb`, signed products as IQ4_NL's kernel, the 6-bit codes `l - 32`.
//! IQ1_S and IQ1_M use [`dot_lattice_q8_k`]: each block unpacked by
//! [`smelt_formats::quant::iq::unpack`] (as the reference dequantizer), then 32 products at a
//! time.

use std::arch::x86_64::*;

use smelt_formats::quant::blocks::{KVALUES_IQ4NL, QK_K};
use smelt_formats::quant::iq::KSIGNS;
use smelt_formats::quant::iq_grids::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};
use smelt_formats::GgmlType;

use super::{bits_32, f16_at, f32_at, hsum, load, mul_sum_i8, scale_pair};

const Q8K: usize = 292;

/// Twin of [`crate::dot::scalar::dot_lattice_q8_k`], for any lattice type.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_lattice_q8_k(ty: GgmlType, n: usize, w: &[u8], x: &[u8]) -> f32 {
    let bb = ty.block_bytes();
    let (mut q, mut sc) = ([0i8; QK_K], [0.0f32; 16]);
    let mut total = 0.0f32;
    for i in 0..n / QK_K {
        if !smelt_formats::quant::iq::unpack(ty, w.get_unchecked(bb * i..bb * (i + 1)), &mut q, &mut sc) {
            continue;
        }
        let xb = x.as_ptr().add(Q8K * i);
        let mut acc = _mm256_setzero_ps();
        for k in 0..8 {
            // Lanes 0..4 sum run 2k, lanes 4..8 run 2k + 1.
            let p = mul_sum_i8(_mm256_loadu_si256(q.as_ptr().add(32 * k) as *const __m256i), load(xb.add(4 + 32 * k)));
            let s = _mm256_set_m128(_mm_set1_ps(sc[2 * k + 1]), _mm_set1_ps(sc[2 * k]));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc);
        }
        total += f32_at(xb) * hsum(acc);
    }
    total
}

/// The products of 32 unsigned grid magnitudes `g` whose signs are the set bits of `signs` with
/// 32 activations at `y`, weighted by `scales` (16-bit, per pair of products), as 8 x i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn signed_products(g: __m256i, signs: u32, y: *const u8, scales: __m256i) -> __m256i {
    let s = _mm256_or_si256(bits_32(signs), _mm256_set1_epi8(1));
    _mm256_madd_epi16(_mm256_maddubs_epi16(g, _mm256_sign_epi8(load(y), s)), scales)
}

#[inline]
unsafe fn u16_at(p: *const u8) -> u16 {
    std::ptr::read_unaligned(p as *const u16)
}

#[inline]
unsafe fn u32_at(p: *const u8) -> u32 {
    std::ptr::read_unaligned(p as *const u32)
}

/// Four 8-value grid points, lowest index first.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn grid8(grid: &[u64], i: [usize; 4]) -> __m256i {
    _mm256_set_epi64x(*grid.get_unchecked(i[3]) as i64, *grid.get_unchecked(i[2]) as i64, *grid.get_unchecked(i[1]) as i64, *grid.get_unchecked(i[0]) as i64)
}

/// Eight 4-value grid points, lowest index first.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn grid4(grid: &[u32], i: [usize; 8]) -> __m256i {
    let g = |k: usize| *grid.get_unchecked(i[k]) as i32;
    _mm256_set_epi32(g(7), g(6), g(5), g(4), g(3), g(2), g(1), g(0))
}

/// Four sign bytes from 4 x 7 bits (even parity restored by [`KSIGNS`]).
#[inline]
fn ksigns4(bits: u32) -> u32 {
    (0..4).fold(0u32, |s, l| s | (KSIGNS[(bits >> (7 * l) & 127) as usize] as u32) << (8 * l))
}

/// Runs `chunk(block, ib) -> 8 x i32` over the 8 chunks of 32 of every block and sums
/// `dx * d * factor * sum`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum_blocks(n: usize, w: &[u8], x: &[u8], bb: usize, factor: f32, chunk: impl Fn(*const u8, *const u8, usize) -> __m256i) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = _mm256_setzero_ps();
    for i in 0..n / QK_K {
        let (wb, xb) = (wp.add(bb * i), xp.add(Q8K * i));
        let mut sumi = _mm256_setzero_si256();
        for ib in 0..8 {
            sumi = _mm256_add_epi32(sumi, chunk(wb, xb.add(4 + 32 * ib), ib));
        }
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(f32_at(xb) * f16_at(wb) * factor), acc);
    }
    hsum(acc)
}

/// IQ2_XXS x Q8_K: per 32, a u32 of four 8-bit grid indices and a u32 of 4 x 7 sign bits with
/// the 4-bit code on top.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_iq2_xxs_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    sum_blocks(n, w, x, 66, 0.125, |wb, y, ib| {
        let (a0, a1) = (u32_at(wb.add(2 + 8 * ib)), u32_at(wb.add(6 + 8 * ib)));
        let g = grid8(&IQ2XXS_GRID, std::array::from_fn(|l| (a0 >> (8 * l) & 0xFF) as usize));
        signed_products(g, ksigns4(a1), y, _mm256_set1_epi16((2 * (a1 >> 28) + 1) as i16))
    })
}

/// IQ2_XS x Q8_K: per 8 weights a u16 of a 9-bit index and 7 sign bits; a 4-bit code per 16.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_iq2_xs_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    sum_blocks(n, w, x, 74, 0.125, |wb, y, ib| {
        let v: [u16; 4] = std::array::from_fn(|l| u16_at(wb.add(2 + 8 * ib + 2 * l)));
        let g = grid8(&IQ2XS_GRID, v.map(|v| (v & 511) as usize));
        let signs = (0..4).fold(0u32, |s, l| s | (KSIGNS[(v[l] >> 9) as usize] as u32) << (8 * l));
        let c = *wb.add(66 + ib);
        signed_products(g, signs, y, scale_pair((2 * (c & 15) + 1) as i16, (2 * (c >> 4) + 1) as i16))
    })
}

/// IQ2_S x Q8_K: 10-bit indices (low bytes, then 2 bits each in `qh`), a sign byte per 8, a
/// 4-bit code per 16.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_iq2_s_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    sum_blocks(n, w, x, 82, 0.125, |wb, y, ib| {
        let qh = *wb.add(66 + ib) as usize;
        let g = grid8(&IQ2S_GRID, std::array::from_fn(|l| *wb.add(2 + 4 * ib + l) as usize | (qh >> (2 * l) & 3) << 8));
        let c = *wb.add(74 + ib);
        signed_products(g, u32_at(wb.add(34 + 4 * ib)), y, scale_pair((2 * (c & 15) + 1) as i16, (2 * (c >> 4) + 1) as i16))
    })
}

/// IQ3_XXS x Q8_K: eight 8-bit indices of 4-value points per 32, then a u32 of 4 x 7 sign bits
/// with the 4-bit code on top.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_iq3_xxs_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    sum_blocks(n, w, x, 98, 0.25, |wb, y, ib| {
        let g = grid4(&IQ3XXS_GRID, std::array::from_fn(|k| *wb.add(2 + 8 * ib + k) as usize));
        let aux = u32_at(wb.add(66 + 4 * ib));
        signed_products(g, ksigns4(aux), y, _mm256_set1_epi16((2 * (aux >> 28) + 1) as i16))
    })
}

/// IQ3_S x Q8_K: 9-bit indices of 4-value points (low bytes, then one bit each in `qh`), a sign
/// byte per 8, a 4-bit code per 32.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_iq3_s_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    sum_blocks(n, w, x, 110, 1.0, |wb, y, ib| {
        let qh = *wb.add(66 + ib) as usize;
        let g = grid4(&IQ3S_GRID, std::array::from_fn(|k| *wb.add(2 + 8 * ib + k) as usize | (qh >> k & 1) << 8));
        let c = *wb.add(106 + ib / 2) >> (4 * (ib % 2)) & 15;
        signed_products(g, u32_at(wb.add(74 + 4 * ib)), y, _mm256_set1_epi16((2 * c + 1) as i16))
    })
}

/// IQ4_XS x Q8_K: 16 bytes of 4-bit IQ4_NL indices per 32 (low nibbles the first 16), a 6-bit
/// code `l` per 32 (scale `l - 32`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_iq4_xs_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
    let m4 = _mm256_set1_epi8(0x0F);
    sum_blocks(n, w, x, 136, 1.0, |wb, y, ib| {
        let qs = _mm_loadu_si128(wb.add(8 + 16 * ib) as *const __m128i);
        let idx = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qs, 4), qs), m4);
        let q = _mm256_shuffle_epi8(table, idx);
        let high = u16_at(wb.add(2)) as u32;
        let l = (*wb.add(4 + ib / 2) >> (4 * (ib % 2)) & 15) as i32 | ((high >> (2 * ib) & 3) << 4) as i32;
        _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(load(y), q)), _mm256_set1_epi16((l - 32) as i16))
    })
}

macro_rules! lattice_kernels {
    ($($f:ident => $ty:ident),*) => {$(
        #[doc = concat!(stringify!($ty), " x Q8_K, see `dot_lattice_q8_k`.")]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $f(n: usize, w: &[u8], x: &[u8]) -> f32 {
            dot_lattice_q8_k(GgmlType::$ty, n, w, x)
        }
    )*};
}

lattice_kernels!(dot_iq1_s_q8_k => IQ1_S, dot_iq1_m_q8_k => IQ1_M);
