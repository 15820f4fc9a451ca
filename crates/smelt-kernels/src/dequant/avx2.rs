//! AVX2 dequantizers. Integers are widened 8 at a time (`vpmovzxbd`/`vpmovsxbd`), converted,
//! and scaled with the same single multiply (and separate add or subtract) as the reference.

#![allow(clippy::missing_safety_doc, unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use smelt_formats::quant::blocks::{get_scale_min_k4, KVALUES_IQ4NL};
use smelt_formats::GgmlType;

use super::DequantFn;

pub fn kernel(ty: GgmlType) -> Option<DequantFn> {
    Some(match ty {
        GgmlType::F16 => f16,
        GgmlType::BF16 => bf16,
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::IQ4_NL => iq4_nl,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        _ => return None,
    })
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    half::f16::from_bits(std::ptr::read_unaligned(p as *const u16)).to_f32()
}

/// Stores `scale * q + add` for 32 unsigned (`SIGNED = false`) or signed bytes `q`, in element
/// order, at `out` (`ADD = false`: no addition, the product alone).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store32<const SIGNED: bool, const ADD: bool>(q: __m256i, scale: f32, add: f32, out: *mut f32) {
    let (s, a) = (_mm256_set1_ps(scale), _mm256_set1_ps(add));
    let halves = [_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)];
    for (h, v) in halves.into_iter().enumerate() {
        for (g, bytes) in [v, _mm_srli_si128(v, 8)].into_iter().enumerate() {
            let i = if SIGNED { _mm256_cvtepi8_epi32(bytes) } else { _mm256_cvtepu8_epi32(bytes) };
            let mut f = _mm256_mul_ps(_mm256_cvtepi32_ps(i), s);
            if ADD {
                f = _mm256_add_ps(f, a);
            }
            _mm256_storeu_ps(out.add(16 * h + 8 * g), f);
        }
    }
}

/// 16 packed bytes -> 32 bytes in element order (low nibbles, then high nibbles).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let v = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m))
}

/// 0x10 in byte k where bit k of the u32 at `p` is set.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fifth_bits(p: *const u8) -> __m256i {
    let bits = _mm256_set1_epi32(std::ptr::read_unaligned(p as *const u32) as i32);
    let spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(bits, spread), mask), mask);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16(src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(d.add(i), _mm256_cvtph_ps(_mm_loadu_si128(s.add(2 * i) as *const __m128i)));
        i += 8;
    }
    while i < n {
        *d.add(i) = f16_at(s.add(2 * i));
        i += 1;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16(src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(s.add(2 * i) as *const __m128i)), 16);
        _mm256_storeu_ps(d.add(i), _mm256_castsi256_ps(v));
        i += 8;
    }
    while i < n {
        *d.add(i) = f32::from_bits((std::ptr::read_unaligned(s.add(2 * i) as *const u16) as u32) << 16);
        i += 1;
    }
}

/// Runs `block(block_ptr, out_ptr)` over every block of `bb` bytes and `be` elements.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn each(src: &[u8], dst: &mut [f32], bb: usize, be: usize, block: impl Fn(*const u8, *mut f32)) {
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    for i in 0..dst.len() / be {
        block(s.add(bb * i), d.add(be * i));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0(src: &[u8], dst: &mut [f32]) {
    // x = d (q - 8): the signed value q - 8 times d, one product as in the reference.
    each(src, dst, 18, 32, |b, o| store32::<true, false>(_mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8)), f16_at(b), 0.0, o));
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1(src: &[u8], dst: &mut [f32]) {
    each(src, dst, 20, 32, |b, o| store32::<false, true>(nibbles(b.add(4)), f16_at(b), f16_at(b.add(2)), o));
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_0(src: &[u8], dst: &mut [f32]) {
    each(src, dst, 22, 32, |b, o| {
        let q = _mm256_or_si256(nibbles(b.add(6)), fifth_bits(b.add(2)));
        store32::<true, false>(_mm256_sub_epi8(q, _mm256_set1_epi8(16)), f16_at(b), 0.0, o)
    });
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_1(src: &[u8], dst: &mut [f32]) {
    each(src, dst, 24, 32, |b, o| {
        let q = _mm256_or_si256(nibbles(b.add(8)), fifth_bits(b.add(4)));
        store32::<false, true>(q, f16_at(b), f16_at(b.add(2)), o)
    });
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0(src: &[u8], dst: &mut [f32]) {
    each(src, dst, 34, 32, |b, o| store32::<true, false>(_mm256_loadu_si256(b.add(2) as *const __m256i), f16_at(b), 0.0, o));
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_nl(src: &[u8], dst: &mut [f32]) {
    let grid = _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
    each(src, dst, 18, 32, |b, o| store32::<true, false>(_mm256_shuffle_epi8(grid, nibbles(b.add(2))), f16_at(b), 0.0, o));
}

/// Q4_K / Q5_K: sub-block `j` (32 elements) is `(d sc_j) q - dmin m_j`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4(src: &[u8], dst: &mut [f32], bb: usize, qs_at: usize, qh_at: Option<usize>) {
    let m4 = _mm256_set1_epi8(0x0F);
    each(src, dst, bb, 256, |b, o| {
        let (d, dmin) = (f16_at(b), f16_at(b.add(2)));
        let packed = &*(b.add(4) as *const [u8; 12]);
        let hbits = qh_at.map(|at| _mm256_loadu_si256(b.add(at) as *const __m256i));
        for c in 0..4 {
            let q4 = _mm256_loadu_si256(b.add(qs_at + 32 * c) as *const __m256i);
            for (s, mut q) in [_mm256_and_si256(q4, m4), _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4)].into_iter().enumerate() {
                let j = 2 * c + s;
                if let Some(h) = hbits {
                    let bit = _mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(j as i32)), _mm256_set1_epi8(1));
                    q = _mm256_or_si256(q, _mm256_slli_epi16(bit, 4));
                }
                let (sc, m) = get_scale_min_k4(j, packed);
                store32::<false, true>(q, d * sc as f32, -(dmin * m as f32), o.add(32 * j));
            }
        }
    });
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k(src: &[u8], dst: &mut [f32]) {
    k4(src, dst, 144, 16, None)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_k(src: &[u8], dst: &mut [f32]) {
    k4(src, dst, 176, 48, Some(16))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k(src: &[u8], dst: &mut [f32]) {
    let (m4, m3, m32) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3), _mm256_set1_epi8(32));
    each(src, dst, 210, 256, |b, o| {
        let d = f16_at(b.add(208));
        let sc = std::slice::from_raw_parts(b.add(192) as *const i8, 16);
        for h in 0..2 {
            let b1 = _mm256_loadu_si256(b.add(64 * h) as *const __m256i);
            let b2 = _mm256_loadu_si256(b.add(64 * h + 32) as *const __m256i);
            let bh = _mm256_loadu_si256(b.add(128 + 32 * h) as *const __m256i);
            let lows = [_mm256_and_si256(b1, m4), _mm256_and_si256(b2, m4), _mm256_and_si256(_mm256_srli_epi16(b1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(b2, 4), m4)];
            for (k, low) in lows.into_iter().enumerate() {
                let high = _mm256_and_si256(_mm256_srl_epi16(bh, _mm_cvtsi32_si128(2 * k as i32)), m3);
                let q = _mm256_sub_epi8(_mm256_or_si256(low, _mm256_slli_epi16(high, 4)), m32);
                let a = 8 * h + 2 * k;
                let out = o.add(128 * h + 32 * k);
                // Two 16-element sub-blocks with their own scales.
                let lo = _mm256_castsi256_si128(q);
                let hi = _mm256_extracti128_si256(q, 1);
                for (half, (v, s)) in [(lo, sc[a]), (hi, sc[a + 1])].into_iter().enumerate() {
                    let scale = _mm256_set1_ps(d * s as f32);
                    for (g, bytes) in [v, _mm_srli_si128(v, 8)].into_iter().enumerate() {
                        let f = _mm256_mul_ps(scale, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)));
                        _mm256_storeu_ps(out.add(16 * half + 8 * g), f);
                    }
                }
            }
        }
    });
}
