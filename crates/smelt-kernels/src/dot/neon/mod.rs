//! aarch64 Advanced SIMD (NEON) kernels, baseline ARMv8-A (no `dotprod` needed). Each is the
//! twin of the function of the same name in [`super::scalar`]. Integer products use widening
//! `smull` (8 -> 16 bits, no saturation possible) and pairwise widening adds to 32 bits.
//! Tested under qemu-user on x86-64 hosts (see the README's testing section).

#![allow(clippy::missing_safety_doc, unsafe_op_in_unsafe_fn)]

mod float;
mod kquants;
mod lattice;
mod legacy;
mod sparse;

use std::arch::aarch64::*;

pub use lattice::{
    dot_iq1_m_q8_k, dot_iq1_s_q8_k, dot_iq2_s_q8_k, dot_iq2_xs_q8_k, dot_iq2_xxs_q8_k, dot_iq3_s_q8_k, dot_iq3_xxs_q8_k, dot_iq4_xs_q8_k,
};
pub use float::{dot_bf16, dot_f16, dot_f32};
pub use kquants::{dot_q2_k_q8_k, dot_q3_k_q8_k, dot_q4_k_q8_k, dot_q5_k_q8_k, dot_q6_k_q8_k, dot_q8_k_q8_k};
pub use sparse::{dot_q4_0_s24, dot_q8_0_s24};
pub use legacy::{dot_iq4_nl, dot_q4_0, dot_q4_1, dot_q5_0, dot_q5_1, dot_q8_0, dot_q8_1};

/// 16 signed bytes times 16 signed bytes, summed into 4 x i32.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot16(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let p1 = vmull_high_s8(a, b);
    vaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1))
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = std::ptr::read_unaligned(p as *const u16);
    vgetq_lane_f32::<0>(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(bits))))
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn f32_at(p: *const u8) -> f32 {
    std::ptr::read_unaligned(p as *const f32)
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn ld_u8(p: *const u8) -> uint8x16_t {
    vld1q_u8(p)
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn ld_s8(p: *const u8) -> int8x16_t {
    vld1q_s8(p as *const i8)
}

/// Byte `k` of entry `i` is 0x10 when bit `k` of `i` is set: spreads 8 bits over 8 bytes.
const BIT4_TABLE: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut k = 0;
        while k < 8 {
            if (i >> k) & 1 == 1 {
                t[i] |= 0x10 << (8 * k);
            }
            k += 1;
        }
        i += 1;
    }
    t
};

/// The 32 bits of `bits` as two vectors of 16 bytes holding 0x10 where the bit is set.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn bit4_32(bits: u32) -> (uint8x16_t, uint8x16_t) {
    let b = bits.to_le_bytes();
    let t = |i: usize| vcreate_u8(BIT4_TABLE[b[i] as usize]);
    (vcombine_u8(t(0), t(1)), vcombine_u8(t(2), t(3)))
}
