//! Quantization block layouts, bit-compatible with ggml (`ggml-common.h`).
//!
//! Every block is `#[repr(C)]`, has a compile-time size check, and says in its doc comment how
//! its elements are reconstructed. Notation: `d`, `m`, `dmin` are f16 scales; `q` are the stored
//! integers; `QK` is the number of elements in the block; super-blocks (`_K` types) hold 256
//! elements split into sub-blocks that carry their own 4- to 8-bit scales.
//!
//! Scales are stored as [`half::f16`] (2-byte aligned). Blocks read from files are copied out with
//! [`bytemuck::pod_read_unaligned`] by the reference code, so unaligned data is never a problem.

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Elements in a legacy (non-K) block.
pub const QK: usize = 32;
/// Elements in a K-quant super-block.
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales and mins in Q4_K/Q5_K.
pub const K_SCALE_SIZE: usize = 12;

macro_rules! assert_block_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(std::mem::size_of::<$t>() == $n);
    };
}

/// Q4_0: `x = d * (q - 8)`, q in 0..16, 4.5 bits per weight.
/// `qs[j]` holds element `j` in its low nibble and element `j + 16` in its high nibble.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK / 2],
}
assert_block_size!(BlockQ4_0, 18);

/// Q4_1: `x = d * q + m`, q in 0..16, 5.0 bits per weight. Nibble order as Q4_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}
assert_block_size!(BlockQ4_1, 20);

/// Q5_0: `x = d * (q - 16)`, q in 0..32, 5.5 bits per weight. Low 4 bits as Q4_0; bit 4 of
/// element `j` is bit `j` of `qh` read as a little-endian u32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
assert_block_size!(BlockQ5_0, 22);

/// Q5_1: `x = d * q + m`, q in 0..32, 6.0 bits per weight. Bit layout as Q5_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
assert_block_size!(BlockQ5_1, 24);

/// Q8_0: `x = d * q`, q in -127..=127, 8.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}
assert_block_size!(BlockQ8_0, 34);

/// Q8_1: `x = d * q` with `s = d * sum(q)` precomputed, 9.0 bits per weight. Used for the
/// activations multiplied with Q4_1/Q5_1 weights (the `m` term needs `sum(x)`).
///
/// ggml's `block_q8_1` is 36 bytes (`static_assert(sizeof(block_q8_1) == 2*sizeof(ggml_half) +
/// QK8_1)`); the `gguf` Python package's size table still says 40, a leftover of an older layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}
assert_block_size!(BlockQ8_1, 36);

/// IQ4_NL: `x = d * KVALUES_IQ4NL[q]`, a non-linear 4-bit grid, 4.5 bits per weight.
/// Nibble order as Q4_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIq4Nl {
    pub d: f16,
    pub qs: [u8; QK / 2],
}
assert_block_size!(BlockIq4Nl, 18);

/// The IQ4_NL grid (signed, scaled by `d`).
pub const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// Q2_K: 16 sub-blocks of 16; `x = d * sc_j * q - dmin * m_j`, q in 0..4, 4-bit `sc_j` and `m_j`
/// packed as `scales[j] = sc_j | m_j << 4`; 2.625 bits per weight.
/// Element `e = 128 h + 32 s + l` (h in 0..2, s in 0..4, l in 0..32) is
/// `(qs[32 h + l] >> 2 s) & 3`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}
assert_block_size!(BlockQ2K, 84);

/// Q3_K: 16 sub-blocks of 16; `x = d * (sc_j - 32) * (q - 4 * !hbit)`, low 2 bits of q as Q2_K,
/// `hbit` of element `e = 32 s + l` is `(hmask[l] >> s) & 1`; 6-bit scales packed in 12 bytes
/// (low nibbles in bytes 0..8, top 2 bits in bytes 8..12); 3.4375 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}
assert_block_size!(BlockQ3K, 110);

/// Q4_K: 8 sub-blocks of 32; `x = d * sc_j * q - dmin * m_j`, q in 0..16, 6-bit `sc_j`, `m_j`
/// packed in 12 bytes (see [`get_scale_min_k4`]); 4.5 bits per weight.
/// Element `e = 64 c + 32 s + l` is `(qs[32 c + l] >> 4 s) & 15`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}
assert_block_size!(BlockQ4K, 144);

/// Q5_K: as Q4_K with a fifth bit: bit 4 of element `e = 32 g + l` is `(qh[l] >> g) & 1`;
/// q in 0..32; 5.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
assert_block_size!(BlockQ5K, 176);

/// Q6_K: 16 sub-blocks of 16; `x = d * scales_j * (q - 32)`, q in 0..64, i8 scales;
/// 6.5625 bits per weight. Element `e = 128 h + t` (t in 0..128): low 4 bits
/// `(ql[64 h + t % 64] >> 4 (t / 64)) & 15`, high 2 bits `(qh[32 h + t % 32] >> 2 (t / 32)) & 3`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}
assert_block_size!(BlockQ6K, 210);

/// Q8_K: `x = d * q` with an f32 scale and the sums of each 16 quants precomputed in `bsums`;
/// 9.125 bits per weight. The activation format for K-quant dot products.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}
assert_block_size!(BlockQ8K, 292);

/// Unpacks the 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block.
///
/// Bytes 0..4 hold `sc_0..3` in their low 6 bits, bytes 4..8 hold `m_0..3`; sub-blocks 4..8 keep
/// their low 4 bits in bytes 8..12 (scale low nibble, min high nibble) and their top 2 bits in the
/// top 2 bits of bytes 0..8.
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Unpacks the 16 signed 6-bit scales (`-32..32`) of a Q3_K block.
#[inline]
pub fn q3k_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = (s[j % 8] >> (4 * (j / 8))) & 0xF;
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = ((low | (high << 4)) as i8) - 32;
    }
    out
}
