//! x86-64 AVX2 + FMA + F16C kernels. Each is the twin of the function of the same name in
//! [`super::scalar`]: the integer sums are identical, only the order of float additions differs.
//!
//! Integer products use `vpmaddubsw` (unsigned 8-bit x signed 8-bit, adjacent pairs summed to
//! 16 bits, saturating) then `vpmaddwd` by ones (or by per-sub-block scales) to 32 bits. For
//! signed x signed, the sign of the left operand is moved onto the right one first. Saturation
//! needs |pair sum| > 32767, which quants from any smelt or ggml quantizer never reach (Q8 values
//! lie in -127..=127); a hostile file with -128 in both operands of a pair could saturate.

// Every function here is `unsafe` with `#[target_feature]`; they are only reached through the
// kernel table after run-time detection.
#![allow(clippy::missing_safety_doc, unsafe_op_in_unsafe_fn)]

mod float;
mod kquants;
mod lattice;
mod legacy;
mod sparse;

use std::arch::x86_64::*;

pub use sparse::{dot_q4_0_s24, dot_q8_0_s24, rows_q4_0_s24, rows_q8_0_s24};
pub use lattice::{
    dot_iq1_m_q8_k, dot_iq1_s_q8_k, dot_iq2_s_q8_k, dot_iq2_xs_q8_k, dot_iq2_xxs_q8_k, dot_iq3_s_q8_k, dot_iq3_xxs_q8_k, dot_iq4_xs_q8_k,
};
pub use float::{dot_bf16, dot_f16, dot_f32};
pub use kquants::{dot_q2_k_q8_k, dot_q3_k_q8_k, dot_q4_k_q8_k, dot_q5_k_q8_k, dot_q6_k_q8_k, dot_q8_k_q8_k};
pub use legacy::{
    dot_iq4_nl, dot_q4_0, dot_q4_1, dot_q5_0, dot_q5_1, dot_q8_0, dot_q8_1, rows_iq4_nl, rows_q4_0, rows_q4_1, rows_q5_0, rows_q5_1,
    tile_iq4_nl, tile_q4_0, tile_q4_1, tile_q5_0, tile_q5_1, tile_q8_0,
};

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of the 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01));
    _mm_cvtsi128_si32(s)
}

/// Reads an f16 at `p` and widens it (`movzx`, `vmovd`, `vcvtph2ps`).
///
/// Written in assembly on purpose: with intrinsics, LLVM sees that only lane 0 of the
/// conversion is used, narrows the load to `vpinsrw` into whatever register it likes, and it
/// picked the FMA accumulator: a false dependency that chained every block's scale to the
/// previous block's FMA and halved the speed of the 32-element kernels. `vmovd` zeroes the
/// register, so nothing is carried from one block to the next.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = std::ptr::read_unaligned(p as *const u16) as u32;
    let out: __m128;
    std::arch::asm!(
        "vmovd {x}, {b:e}",
        "vcvtph2ps {x}, {x}",
        b = in(reg) bits,
        x = out(xmm_reg) out,
        options(pure, nomem, nostack, preserves_flags),
    );
    _mm_cvtss_f32(out)
}

/// Bytes ahead of the weight being read that the 32-element kernels prefetch: the hardware
/// prefetcher alone leaves one core at about half of what it can stream (measured with
/// `benches/gemv_bandwidth.rs`).
const PREFETCH_AHEAD: usize = 1024;

/// Asks for the cache line `PREFETCH_AHEAD` bytes after `p` (a hint: never faults).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prefetch(p: *const u8) {
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD) as *const i8);
}

/// Asks for the cache line at `p` (a hint: never faults, also past the end of the data).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prefetch_at(p: *const u8) {
    _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_at(p: *const u8) -> f32 {
    std::ptr::read_unaligned(p as *const f32)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// 32 bits -> 32 bytes, 0xFF where the bit is set (byte k takes bit k).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bits_32(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    let spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    let v = _mm256_shuffle_epi8(v, spread);
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(v, mask), mask)
}

/// Unsigned bytes x signed bytes, all 32 products summed in pairs of lanes to 8 x i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mul_sum_us8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// Signed bytes x signed bytes to 8 x i32 (the sign of `a` moved onto `b`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mul_sum_i8(a: __m256i, b: __m256i) -> __m256i {
    mul_sum_us8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a))
}

/// Two i16 scales, the first for lanes 0..8 (elements 0..16 of a 32-element chunk), the second
/// for lanes 8..16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_pair(a: i16, b: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(b), _mm_set1_epi16(a))
}
