//! K-quant super-blocks times Q8_K. Every 16-byte vector of unpacked quants is one 16-element
//! sub-block (Q2_K, Q3_K, Q6_K) or half of a 32-element one (Q4_K, Q5_K), so each sub-block's
//! integer sum is reduced across lanes and weighted by its scale in scalar code.

use std::arch::aarch64::*;

use smelt_formats::quant::blocks::{get_scale_min_k4, q3k_scales};

use super::{dot16, f16_at, f32_at, ld_s8, ld_u8};

const Q8K: usize = 292;

#[inline]
#[target_feature(enable = "neon")]
unsafe fn bsum(xb: *const u8, j: usize) -> i32 {
    std::ptr::read_unaligned(xb.add(260 + 2 * j) as *const i16) as i32
}

/// `(v >> shift) & mask` per byte, for a shift chosen at run time.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn field(v: uint8x16_t, shift: usize, mask: u8) -> uint8x16_t {
    vandq_u8(vshlq_u8(v, vdupq_n_s8(-(shift as i8))), vdupq_n_u8(mask))
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn sub_sum(q: int8x16_t, y: *const u8) -> i32 {
    vaddvq_s32(dot16(q, ld_s8(y)))
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q2_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut s = 0.0f32;
    for i in 0..n / 256 {
        let (wb, xb) = (wp.add(84 * i), xp.add(Q8K * i));
        let sc = std::slice::from_raw_parts(wb, 16);
        let (mut isum, mut msum) = (0i32, 0i32);
        for h in 0..2 {
            for half in 0..2 {
                let q2 = ld_u8(wb.add(16 + 32 * h + 16 * half));
                for sh in 0..4 {
                    let j = 8 * h + 2 * sh + half;
                    let q = vreinterpretq_s8_u8(field(q2, 2 * sh, 3));
                    isum += (sc[j] & 0xF) as i32 * sub_sum(q, xb.add(4 + 16 * j));
                }
            }
        }
        for (j, &scj) in sc.iter().enumerate() {
            msum += (scj >> 4) as i32 * bsum(xb, j);
        }
        let dx = f32_at(xb);
        s += dx * f16_at(wb.add(80)) * isum as f32 - dx * f16_at(wb.add(82)) * msum as f32;
    }
    s
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q3_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let four = vdupq_n_s8(4);
    let mut s = 0.0f32;
    for i in 0..n / 256 {
        let (wb, xb) = (wp.add(110 * i), xp.add(Q8K * i));
        let sc = q3k_scales(&*(wb.add(96) as *const [u8; 12]));
        let mut isum = 0i32;
        for h in 0..2 {
            for half in 0..2 {
                let q2 = ld_u8(wb.add(32 + 32 * h + 16 * half));
                let hm = ld_u8(wb.add(16 * half));
                for sh in 0..4 {
                    let j = 8 * h + 2 * sh + half;
                    let low = vreinterpretq_s8_u8(field(q2, 2 * sh, 3));
                    let hb = vreinterpretq_s8_u8(field(hm, 4 * h + sh, 1));
                    // q = low - 4 (1 - hbit) = low - 4 + 4 hbit
                    let q = vaddq_s8(vsubq_s8(low, four), vshlq_n_s8::<2>(hb));
                    isum += sc[j] as i32 * sub_sum(q, xb.add(4 + 16 * j));
                }
            }
        }
        s += f32_at(xb) * f16_at(wb.add(108)) * isum as f32;
    }
    s
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_k4(n: usize, w: &[u8], x: &[u8], block_bytes: usize, qs_at: usize, qh_at: Option<usize>) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let m4 = vdupq_n_u8(0x0F);
    let mut s = 0.0f32;
    for i in 0..n / 256 {
        let (wb, xb) = (wp.add(block_bytes * i), xp.add(Q8K * i));
        let packed = &*(wb.add(4) as *const [u8; 12]);
        let (mut isum, mut msum) = (0i32, 0i32);
        for c in 0..4 {
            let (mut sum_lo, mut sum_hi) = (0i32, 0i32);
            for half in 0..2 {
                let q4 = ld_u8(wb.add(qs_at + 32 * c + 16 * half));
                let mut lo = vandq_u8(q4, m4);
                let mut hi = vshrq_n_u8::<4>(q4);
                if let Some(o) = qh_at {
                    let hb = ld_u8(wb.add(o + 16 * half));
                    lo = vorrq_u8(lo, vshlq_n_u8::<4>(field(hb, 2 * c, 1)));
                    hi = vorrq_u8(hi, vshlq_n_u8::<4>(field(hb, 2 * c + 1, 1)));
                }
                sum_lo += sub_sum(vreinterpretq_s8_u8(lo), xb.add(4 + 64 * c + 16 * half));
                sum_hi += sub_sum(vreinterpretq_s8_u8(hi), xb.add(4 + 64 * c + 32 + 16 * half));
            }
            let (sc0, m0) = get_scale_min_k4(2 * c, packed);
            let (sc1, m1) = get_scale_min_k4(2 * c + 1, packed);
            isum += sc0 as i32 * sum_lo + sc1 as i32 * sum_hi;
            msum += m0 as i32 * (bsum(xb, 4 * c) + bsum(xb, 4 * c + 1)) + m1 as i32 * (bsum(xb, 4 * c + 2) + bsum(xb, 4 * c + 3));
        }
        let dx = f32_at(xb);
        s += dx * f16_at(wb) * isum as f32 - dx * f16_at(wb.add(2)) * msum as f32;
    }
    s
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q4_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_k4(n, w, x, 144, 16, None)
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q5_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_k4(n, w, x, 176, 48, Some(16))
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q6_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let (m4, m32) = (vdupq_n_u8(0x0F), vdupq_n_s8(32));
    let mut s = 0.0f32;
    for i in 0..n / 256 {
        let (wb, xb) = (wp.add(210 * i), xp.add(Q8K * i));
        let sc = std::slice::from_raw_parts(wb.add(192) as *const i8, 16);
        let mut isum = 0i32;
        for h in 0..2 {
            for half in 0..2 {
                let qh = ld_u8(wb.add(128 + 32 * h + 16 * half));
                for k in 0..4 {
                    // Elements 128 h + 32 k + 16 half .. + 16: sub-block 8 h + 2 k + half.
                    let ql = ld_u8(wb.add(64 * h + 32 * (k % 2) + 16 * half));
                    let low = if k < 2 { vandq_u8(ql, m4) } else { vshrq_n_u8::<4>(ql) };
                    let q = vorrq_u8(low, vshlq_n_u8::<4>(field(qh, 2 * k, 3)));
                    let q = vsubq_s8(vreinterpretq_s8_u8(q), m32);
                    let j = 8 * h + 2 * k + half;
                    isum += sc[j] as i32 * sub_sum(q, xb.add(4 + 16 * j));
                }
            }
        }
        s += f32_at(xb) * f16_at(wb.add(208)) * isum as f32;
    }
    s
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_q8_k_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut s = 0.0f32;
    for i in 0..n / 256 {
        let (wb, xb) = (wp.add(Q8K * i), xp.add(Q8K * i));
        let mut acc = vdupq_n_s32(0);
        for k in 0..16 {
            acc = vaddq_s32(acc, dot16(ld_s8(wb.add(4 + 16 * k)), ld_s8(xb.add(4 + 16 * k))));
        }
        s += f32_at(wb) * f32_at(xb) * vaddvq_s32(acc) as f32;
    }
    s
}
