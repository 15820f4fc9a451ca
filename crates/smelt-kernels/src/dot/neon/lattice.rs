//! The lattice IQ types (IQ1_S .. IQ4_XS) times Q8_K: each block unpacked to 256 signed bytes
//! and 16 real scales by [`smelt_formats::quant::iq::unpack`] (as the reference dequantizer
//! does), then 16 widening products per run, each run weighted by its scale in f32.

use std::arch::aarch64::*;

use smelt_formats::quant::blocks::QK_K;
use smelt_formats::GgmlType;

use super::{dot16, f32_at, ld_s8};

const Q8K: usize = 292;

/// Twin of [`crate::dot::scalar::dot_lattice_q8_k`].
#[target_feature(enable = "neon")]
pub unsafe fn dot_lattice_q8_k(ty: GgmlType, n: usize, w: &[u8], x: &[u8]) -> f32 {
    let bb = ty.block_bytes();
    let (mut q, mut sc) = ([0i8; QK_K], [0.0f32; 16]);
    let mut total = 0.0f32;
    for i in 0..n / QK_K {
        if !smelt_formats::quant::iq::unpack(ty, w.get_unchecked(bb * i..bb * (i + 1)), &mut q, &mut sc) {
            continue;
        }
        let xb = x.as_ptr().add(Q8K * i);
        let mut acc = vdupq_n_f32(0.0);
        for (j, &s) in sc.iter().enumerate() {
            let p = dot16(ld_s8(q.as_ptr().add(16 * j) as *const u8), ld_s8(xb.add(4 + 16 * j)));
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), s);
        }
        total += f32_at(xb) * vaddvq_f32(acc);
    }
    total
}

macro_rules! lattice_kernels {
    ($($f:ident => $ty:ident),*) => {$(
        #[doc = concat!(stringify!($ty), " x Q8_K, see [`dot_lattice_q8_k`].")]
        #[target_feature(enable = "neon")]
        pub unsafe fn $f(n: usize, w: &[u8], x: &[u8]) -> f32 {
            dot_lattice_q8_k(GgmlType::$ty, n, w, x)
        }
    )*};
}

lattice_kernels!(
    dot_iq1_s_q8_k => IQ1_S, dot_iq1_m_q8_k => IQ1_M, dot_iq2_xxs_q8_k => IQ2_XXS, dot_iq2_xs_q8_k => IQ2_XS,
    dot_iq2_s_q8_k => IQ2_S, dot_iq3_xxs_q8_k => IQ3_XXS, dot_iq3_s_q8_k => IQ3_S, dot_iq4_xs_q8_k => IQ4_XS
);
