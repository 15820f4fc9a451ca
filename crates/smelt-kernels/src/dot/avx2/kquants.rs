//! K-quant super-blocks (256 elements) times Q8_K activations. Per block the quants are unpacked
//! 32 at a time, multiplied with `vpmaddubsw`, weighted by their sub-block scales with
//! `vpmaddwd` into 8 x i32, and the block's integer sum is scaled once. Offsets (Q2_K/Q4_K/Q5_K
//! mins) use the activation block's precomputed 16-element sums.

use std::arch::x86_64::*;

use smelt_formats::quant::blocks::{get_scale_min_k4, q3k_scales};

use super::{f16_at, f32_at, hsum, hsum_i32, load, mul_sum_i8, scale_pair};

// Block layouts (bytes). Q8_K: d f32@0 qs@4 bsums i16@260 (292). Q2_K: scales@0 qs@16 d@80
// dmin@82 (84). Q3_K: hmask@0 qs@32 scales@96 d@108 (110). Q4_K: d@0 dmin@2 scales@4 qs@16
// (144). Q5_K: d@0 dmin@2 scales@4 qh@16 qs@48 (176). Q6_K: ql@0 qh@128 scales@192 d@208 (210).
const Q8K: usize = 292;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bsum(xb: *const u8, j: usize) -> i32 {
    std::ptr::read_unaligned(xb.add(260 + 2 * j) as *const i16) as i32
}

/// Bits `shift..` of every byte of `v`, masked with `mask` (per byte).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn field(v: __m256i, shift: i32, mask: __m256i) -> __m256i {
    _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift)), mask)
}

/// Runs `block(i) -> (scale, int sums, scalar correction)` over `nb` blocks of `bb` bytes at
/// `wp`, prefetching every cache line of the weights ahead.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum_blocks(nb: usize, wp: *const u8, bb: usize, block: impl Fn(usize) -> (f32, __m256i, f32)) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut extra = 0.0f32;
    for i in 0..nb {
        let mut line = 0;
        while line < bb {
            super::prefetch(wp.add(bb * i + line));
            line += 64;
        }
        let (d, s, e) = block(i);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s), acc);
        extra += e;
    }
    hsum(acc) + extra
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q2_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let m3 = _mm256_set1_epi8(3);
    sum_blocks(n / 256, wp, 84, |i| {
        let (wb, xb) = (wp.add(84 * i), xp.add(Q8K * i));
        let dx = f32_at(xb);
        let sc = std::slice::from_raw_parts(wb, 16);
        let msum: i32 = (0..16).map(|j| (sc[j] >> 4) as i32 * bsum(xb, j)).sum();
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let q2 = load(wb.add(16 + 32 * h));
            for s in 0..4 {
                let a = 8 * h + 2 * s;
                let q = field(q2, 2 * s as i32, m3);
                let p = _mm256_maddubs_epi16(q, load(xb.add(4 + 128 * h + 32 * s)));
                let sv = scale_pair((sc[a] & 0xF) as i16, (sc[a + 1] & 0xF) as i16);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, sv));
            }
        }
        (dx * f16_at(wb.add(80)), sumi, -dx * f16_at(wb.add(82)) * msum as f32)
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q3_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let (m1, m3) = (_mm256_set1_epi8(1), _mm256_set1_epi8(3));
    sum_blocks(n / 256, wp, 110, |i| {
        let (wb, xb) = (wp.add(110 * i), xp.add(Q8K * i));
        let sc = q3k_scales(&*(wb.add(96) as *const [u8; 12]));
        let hm = load(wb);
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let q2 = load(wb.add(32 + 32 * h));
            for s in 0..4 {
                let a = 8 * h + 2 * s;
                let low = field(q2, 2 * s as i32, m3);
                // 4 where the high bit is clear: q = low - 4 (1 - hbit).
                let hb = field(hm, (4 * h + s) as i32, m1);
                let four = _mm256_slli_epi16(_mm256_xor_si256(hb, m1), 2);
                let y = load(xb.add(4 + 128 * h + 32 * s));
                let p = _mm256_sub_epi16(_mm256_maddubs_epi16(low, y), _mm256_maddubs_epi16(four, y));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(sc[a] as i16, sc[a + 1] as i16)));
            }
        }
        (f32_at(xb) * f16_at(wb.add(108)), sumi, 0.0)
    })
}

/// Shared by Q4_K and Q5_K: `qh_at` is the offset of the fifth bits (Q5_K) or `None`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_k4(n: usize, w: &[u8], x: &[u8], block_bytes: usize, qs_at: usize, qh_at: Option<usize>) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let (m4, m1) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(1));
    sum_blocks(n / 256, wp, block_bytes, |i| {
        let (wb, xb) = (wp.add(block_bytes * i), xp.add(Q8K * i));
        let dx = f32_at(xb);
        let packed = &*(wb.add(4) as *const [u8; 12]);
        let mut msum = 0i32;
        let mut sc = [0i16; 8];
        for (j, s) in sc.iter_mut().enumerate() {
            let (scj, mj) = get_scale_min_k4(j, packed);
            *s = scj as i16;
            msum += mj as i32 * (bsum(xb, 2 * j) + bsum(xb, 2 * j + 1));
        }
        let hbits = qh_at.map(|o| load(wb.add(o)));
        let mut sumi = _mm256_setzero_si256();
        for c in 0..4 {
            let q4 = load(wb.add(qs_at + 32 * c));
            let mut lo = _mm256_and_si256(q4, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            if let Some(hb) = hbits {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(field(hb, (2 * c) as i32, m1), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(field(hb, (2 * c + 1) as i32, m1), 4));
            }
            let p0 = _mm256_maddubs_epi16(lo, load(xb.add(4 + 64 * c)));
            let p1 = _mm256_maddubs_epi16(hi, load(xb.add(4 + 64 * c + 32)));
            let s0 = _mm256_madd_epi16(p0, _mm256_set1_epi16(sc[2 * c]));
            let s1 = _mm256_madd_epi16(p1, _mm256_set1_epi16(sc[2 * c + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(s0, s1));
        }
        (dx * f16_at(wb), sumi, -dx * f16_at(wb.add(2)) * msum as f32)
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_k4(n, w, x, 144, 16, None)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_k4(n, w, x, 176, 48, Some(16))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let (m4, m3, m32) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3), _mm256_set1_epi8(32));
    sum_blocks(n / 256, wp, 210, |i| {
        let (wb, xb) = (wp.add(210 * i), xp.add(Q8K * i));
        let sc = std::slice::from_raw_parts(wb.add(192) as *const i8, 16);
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let b1 = load(wb.add(64 * h));
            let b2 = load(wb.add(64 * h + 32));
            let bh = load(wb.add(128 + 32 * h));
            // Chunk k holds elements 128 h + 32 k .. + 32: low nibbles of b1, b2, then high ones.
            let lows = [_mm256_and_si256(b1, m4), _mm256_and_si256(b2, m4), field(b1, 4, m4), field(b2, 4, m4)];
            for (k, low) in lows.into_iter().enumerate() {
                let q = _mm256_or_si256(low, _mm256_slli_epi16(field(bh, 2 * k as i32, m3), 4));
                let y = load(xb.add(4 + 128 * h + 32 * k));
                let p = _mm256_sub_epi16(_mm256_maddubs_epi16(q, y), _mm256_maddubs_epi16(m32, y));
                let a = 8 * h + 2 * k;
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(sc[a] as i16, sc[a + 1] as i16)));
            }
        }
        (f32_at(xb) * f16_at(wb.add(208)), sumi, 0.0)
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut s = 0.0f32;
    for i in 0..n / 256 {
        let (wb, xb) = (wp.add(Q8K * i), xp.add(Q8K * i));
        let mut sumi = _mm256_setzero_si256();
        for k in 0..8 {
            sumi = _mm256_add_epi32(sumi, mul_sum_i8(load(wb.add(4 + 32 * k)), load(xb.add(4 + 32 * k))));
        }
        s += f32_at(wb) * f32_at(xb) * hsum_i32(sumi) as f32;
    }
    s
}
