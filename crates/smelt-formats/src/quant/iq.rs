//! ggml's lattice ("i-quant") super-block types: IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS,
//! IQ3_S and IQ4_XS, all of 256 weights.
//!
//! Every one of them reconstructs a weight as `x = s_j * q` with an integer `q` and a real scale
//! `s_j` shared by a run of 16 (or 32) weights, so one function, [`unpack`], turns a block into
//! 256 signed bytes and 16 scales (one per 16 weights); the reference dequantizer and the
//! kernels of `smelt-kernels` both read blocks through it. What `q` and `s_j` are per type
//! (`d` is the block's f16 scale; `g` a grid point of [`super::iq_grids`], 4 or 8 values
//! addressed by an index in the block; signs are one bit per weight):
//!
//! | type | bits/weight | `q` | `s_j` |
//! |---|---|---|---|
//! | IQ2_XXS | 2.06 | `±g`, `g` in {8, 25, 43}; signs from `KSIGNS[7 bits]` | `d (0.5 + l) / 4`, `l` 4 bits per 32 |
//! | IQ2_XS | 2.31 | as IQ2_XXS, 9-bit indices | `d (0.5 + l) / 4`, `l` 4 bits per 16 |
//! | IQ2_S | 2.56 | as IQ2_XXS, 10-bit indices, explicit sign bytes | `d (0.5 + l) / 4`, per 16 |
//! | IQ3_XXS | 3.06 | `±g`, `g` in {4, 12, ..., 62}; signs from `KSIGNS` | `d (0.5 + l) / 2`, per 32 |
//! | IQ3_S | 3.44 | `±g`, `g` odd in 1..=15, 9-bit indices, explicit signs | `d (1 + 2 l)`, per 32 |
//! | IQ4_XS | 4.25 | `KVALUES_IQ4NL[4 bits]` | `d (l - 32)`, `l` 6 bits per 32 |
//! | IQ1_S | 1.56 | `8 g ± 1`, `g` in {-1, 0, 1} (ggml's `g ± 1/8`) | `d (2 l + 1) / 8`, per 32 |
//! | IQ1_M | 1.75 | as IQ1_S, the `±` per 8 weights | `d (2 l + 1) / 8`, per 16; `d` split over 4 nibbles |
//!
//! `KSIGNS[i]` is `i` with an eighth bit that makes the number of set bits even (ggml stores 7
//! sign bits per 8 weights). The layouts are checked value for value against the `gguf`
//! package's dequantizers (`tests/reference_quant.rs`).

use half::f16;

use super::blocks::{KVALUES_IQ4NL, QK_K};
use super::iq_grids::*;
use super::GgmlType;

/// `i | parity(i) << 7` for the 7 stored sign bits `i` of 8 weights.
const fn ksigns() -> [u8; 128] {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = i as u8 | (((i as u32).count_ones() as u8 & 1) << 7);
        i += 1;
    }
    t
}
pub static KSIGNS: [u8; 128] = ksigns();

/// Whether `ty` is one of the lattice types [`unpack`] reads.
pub fn is_lattice(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, IQ1_S | IQ1_M | IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S | IQ4_XS)
}

#[inline]
fn f16_at(b: &[u8], o: usize) -> f32 {
    f16::from_le_bytes([b[o], b[o + 1]]).to_f32()
}

#[inline]
fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

#[inline]
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Writes the 8 values of grid point `g` (one per byte, all in 1..128), negated where bit `k`
/// of `signs` is set, into `q`.
#[inline]
fn put8(q: &mut [i8], g: u64, signs: u8) {
    for (k, o) in q[..8].iter_mut().enumerate() {
        let v = (g >> (8 * k)) as u8 as i8;
        *o = if signs >> k & 1 != 0 { -v } else { v };
    }
}

/// As [`put8`] for a 4-value grid point.
#[inline]
fn put4(q: &mut [i8], g: u32, signs: u8) {
    for (k, o) in q[..4].iter_mut().enumerate() {
        let v = (g >> (8 * k)) as u8 as i8;
        *o = if signs >> k & 1 != 0 { -v } else { v };
    }
}

/// The integers `q` and the 16 scales of one block of a lattice type (`block` is exactly one
/// block, `ty` satisfies [`is_lattice`]): weight `i` is `scales[i / 16] * q[i]`. Returns `false`
/// (and writes nothing) for any other type or length.
pub fn unpack(ty: GgmlType, block: &[u8], q: &mut [i8; QK_K], scales: &mut [f32; 16]) -> bool {
    if !is_lattice(ty) || block.len() != ty.block_bytes() {
        return false;
    }
    match ty {
        GgmlType::IQ2_XXS => {
            let d = f16_at(block, 0);
            for ib in 0..8 {
                let (aux0, aux1) = (u32_at(block, 2 + 8 * ib), u32_at(block, 6 + 8 * ib));
                let s = d * (0.5 + (aux1 >> 28) as f32) * 0.25;
                scales[2 * ib] = s;
                scales[2 * ib + 1] = s;
                for l in 0..4 {
                    let g = IQ2XXS_GRID[(aux0 >> (8 * l) & 0xFF) as usize];
                    put8(&mut q[32 * ib + 8 * l..], g, KSIGNS[(aux1 >> (7 * l) & 127) as usize]);
                }
            }
        }
        GgmlType::IQ2_XS => {
            let d = f16_at(block, 0);
            for k in 0..32 {
                let v = u16_at(block, 2 + 2 * k);
                put8(&mut q[8 * k..], IQ2XS_GRID[(v & 511) as usize], KSIGNS[(v >> 9) as usize]);
            }
            for (j, s) in scales.iter_mut().enumerate() {
                let l = block[66 + j / 2] >> (4 * (j % 2)) & 0xF;
                *s = d * (0.5 + l as f32) * 0.25;
            }
        }
        GgmlType::IQ2_S => {
            // d, qs[32] (index low bytes), signs[32], qh[8] (2 high bits per index), scales[8].
            let d = f16_at(block, 0);
            for k in 0..32 {
                let idx = block[2 + k] as usize | ((block[66 + k / 4] as usize >> (2 * (k % 4)) & 3) << 8);
                put8(&mut q[8 * k..], IQ2S_GRID[idx], block[34 + k]);
            }
            for (j, s) in scales.iter_mut().enumerate() {
                let l = block[74 + j / 2] >> (4 * (j % 2)) & 0xF;
                *s = d * (0.5 + l as f32) * 0.25;
            }
        }
        GgmlType::IQ3_XXS => {
            // d, qs[64] (indices), then 8 u32: 4 x 7 sign bits and a 4-bit scale per 32.
            let d = f16_at(block, 0);
            for ib in 0..8 {
                let aux = u32_at(block, 66 + 4 * ib);
                let s = d * (0.5 + (aux >> 28) as f32) * 0.5;
                scales[2 * ib] = s;
                scales[2 * ib + 1] = s;
                for l in 0..4 {
                    let signs = KSIGNS[(aux >> (7 * l) & 127) as usize];
                    let base = 32 * ib + 8 * l;
                    put4(&mut q[base..], IQ3XXS_GRID[block[2 + 8 * ib + 2 * l] as usize], signs);
                    put4(&mut q[base + 4..], IQ3XXS_GRID[block[3 + 8 * ib + 2 * l] as usize], signs >> 4);
                }
            }
        }
        GgmlType::IQ3_S => {
            // d, qs[64] (index low bytes), qh[8] (bit 8 of each index), signs[32], scales[4].
            let d = f16_at(block, 0);
            for k in 0..64 {
                let idx = block[2 + k] as usize | ((block[66 + k / 8] as usize >> (k % 8) & 1) << 8);
                put4(&mut q[4 * k..], IQ3S_GRID[idx], block[74 + k / 2] >> (4 * (k % 2)));
            }
            for ib in 0..8 {
                let l = block[106 + ib / 2] >> (4 * (ib % 2)) & 0xF;
                let s = d * (1 + 2 * l) as f32;
                scales[2 * ib] = s;
                scales[2 * ib + 1] = s;
            }
        }
        GgmlType::IQ4_XS => {
            // d, scales_h (u16: 2 high bits per 32), scales_l[4] (4 low bits per 32), qs[128].
            let d = f16_at(block, 0);
            let high = u16_at(block, 2);
            for ib in 0..8 {
                let l = (block[4 + ib / 2] >> (4 * (ib % 2)) & 0xF) | (((high >> (2 * ib)) & 3) as u8) << 4;
                let s = d * (l as i32 - 32) as f32;
                scales[2 * ib] = s;
                scales[2 * ib + 1] = s;
                let qs = &block[8 + 16 * ib..24 + 16 * ib];
                for j in 0..16 {
                    q[32 * ib + j] = KVALUES_IQ4NL[(qs[j] & 0xF) as usize];
                    q[32 * ib + 16 + j] = KVALUES_IQ4NL[(qs[j] >> 4) as usize];
                }
            }
        }
        GgmlType::IQ1_S => {
            // d, qs[32] (index low bytes), qh[8] u16: 4 x 3 high index bits, 3-bit scale, sign of delta.
            let d = f16_at(block, 0);
            for ib in 0..8 {
                let qh = u16_at(block, 34 + 2 * ib);
                let s = d * (2 * (qh >> 12 & 7) + 1) as f32 / 8.0;
                scales[2 * ib] = s;
                scales[2 * ib + 1] = s;
                let delta: i8 = if qh & 0x8000 != 0 { -1 } else { 1 };
                for l in 0..4 {
                    let idx = block[2 + 4 * ib + l] as usize | ((qh as usize >> (3 * l) & 7) << 8);
                    put_iq1(&mut q[32 * ib + 8 * l..], IQ1S_GRID[idx], delta);
                }
            }
        }
        GgmlType::IQ1_M => {
            // qs[32] (index low bytes), qh[16] (per index: 3 high bits and the delta's sign),
            // scales: 4 u16 of 4 x 3-bit scales, d in their top nibbles.
            let sc: [u16; 4] = std::array::from_fn(|i| u16_at(block, 48 + 2 * i));
            let bits = (sc[0] >> 12) | (sc[1] >> 8 & 0x00F0) | (sc[2] >> 4 & 0x0F00) | (sc[3] & 0xF000);
            let d = f16::from_bits(bits).to_f32();
            for (j, s) in scales.iter_mut().enumerate() {
                *s = d * (2 * (sc[j / 4] >> (3 * (j % 4)) & 7) + 1) as f32 / 8.0;
            }
            for k in 0..32 {
                let h = block[32 + k / 2] >> (4 * (k % 2)) & 0xF;
                let idx = block[k] as usize | ((h as usize & 7) << 8);
                put_iq1(&mut q[8 * k..], IQ1S_GRID[idx], if h & 8 != 0 { -1 } else { 1 });
            }
        }
        _ => return false,
    }
    true
}

/// `8 g + delta` for the 8 values `g` in {-1, 0, 1} of an IQ1 grid point.
#[inline]
fn put_iq1(q: &mut [i8], g: u64, delta: i8) {
    for (k, o) in q[..8].iter_mut().enumerate() {
        *o = 8 * ((g >> (8 * k)) as u8 as i8) + delta;
    }
}

/// The reference dequantizer of every lattice type: `x_i = scales[i / 16] * q_i` per block.
pub(super) fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let (mut q, mut s) = ([0i8; QK_K], [0.0f32; 16]);
    for (b, y) in src.chunks_exact(ty.block_bytes()).zip(dst.chunks_exact_mut(QK_K)) {
        if !unpack(ty, b, &mut q, &mut s) {
            y.fill(0.0);
            continue;
        }
        for (i, o) in y.iter_mut().enumerate() {
            *o = s[i / 16] * q[i] as f32;
        }
    }
}

macro_rules! dequantizers {
    ($($f:ident => $ty:ident),*) => {$(
        pub(super) fn $f(src: &[u8], dst: &mut [f32]) {
            dequantize(GgmlType::$ty, src, dst)
        }
    )*};
}

dequantizers!(
    dequantize_iq2_xxs => IQ2_XXS, dequantize_iq2_xs => IQ2_XS, dequantize_iq2_s => IQ2_S,
    dequantize_iq3_xxs => IQ3_XXS, dequantize_iq3_s => IQ3_S, dequantize_iq4_xs => IQ4_XS,
    dequantize_iq1_s => IQ1_S, dequantize_iq1_m => IQ1_M
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ksigns_have_even_parity_and_keep_the_stored_bits() {
        for (i, &s) in KSIGNS.iter().enumerate() {
            assert_eq!(s & 127, i as u8);
            assert_eq!(s.count_ones() % 2, 0);
        }
        // Spot values of the table as ggml prints it.
        assert_eq!(&KSIGNS[..4], &[0x00, 0x81, 0x82, 0x03]);
        assert_eq!(KSIGNS[127], 0xff);
    }

    #[test]
    fn unpack_refuses_other_types_and_lengths() {
        let (mut q, mut s) = ([0i8; QK_K], [0.0f32; 16]);
        assert!(!unpack(GgmlType::Q4_K, &[0; 144], &mut q, &mut s));
        assert!(!unpack(GgmlType::IQ4_XS, &[0; 135], &mut q, &mut s));
        assert!(unpack(GgmlType::IQ4_XS, &[0; 136], &mut q, &mut s));
    }
}
