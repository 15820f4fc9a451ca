//! 2:4 sparse weights: smelt's own block types (llama.cpp cannot read them), for matrices pruned
//! to the N:M pattern 2:4 (at most two non-zeros in every aligned group of four weights; see
//! `smelt prune --method wanda:2:4`). A dense file stores the zeros; these store only the two
//! kept values of each group, quantized like Q4_0 or Q8_0, and each one's position in its
//! group (2 bits).
//!
//! One block covers 64 weights = 16 groups = 32 kept values, with one f16 scale per 32 weights
//! (`d[0]` for weights 0..32, `d[1]` for 32..64), exactly as the dense type's two blocks: the
//! kept values are quantized as the dense type quantizes the pruned weights (the pruned zeros
//! change no scale and are stored exactly there), so a 2:4 matrix in the sparse type holds the
//! very values of its dense twin, in fewer bytes:
//!
//! - [`BlockQ4_0S24`]: `d` (2 x f16), 32 kept 4-bit values (`x = d (q - 8)`, as Q4_0), 8 bytes
//!   of positions: 28 bytes, **3.5 bits per original weight** (Q4_0: 4.5).
//! - [`BlockQ8_0S24`]: `d` (2 x f16), 32 kept signed bytes (`x = d q`, as Q8_0), 8 bytes of
//!   positions: 44 bytes, **5.5 bits per original weight** (Q8_0: 8.5).
//!
//! The kept values are stored in an order chosen for the AVX2 kernel (`vpshufb` gathers the
//! matching activations within 128-bit lanes): the 64 weights are four chunks of 16
//! (A = 0..16, B = 16..32, C = 32..48, D = 48..64) and kept values 0..8 come from A, 8..16
//! from C, 16..24 from B, 24..32 from D, two per group in increasing position. Kept value
//! `k = 8 c + j` (chunk slot `c`, 0..4, in the order A, C, B, D) is group `j / 2` of its chunk;
//! its position in the group is bits `2c, 2c + 1` of `idx[j]`; its scale is `d[c % 2]`. The
//! values' quants are packed as in Q4_0 / Q8_0 over the kept order (Q4: `qs[k]` low nibble =
//! kept `k`, high nibble = kept `k + 16`).
//!
//! Quantizing a matrix that is not 2:4 keeps the two weights of largest magnitude in each
//! group (the first on ties): magnitude 2:4 pruning, lossy like any quantizer. A 2:4 matrix
//! keeps exactly its non-zeros.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::blocks::{BlockQ4_0, BlockQ8_0, QK};
use super::{legacy, read_blocks, write_blocks};

/// Weights per sparse block.
pub const QK_S24: usize = 64;

/// 2:4 sparse Q4_0: `x = d (q - 8)` at the kept positions, 0 elsewhere; 3.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0S24 {
    /// Scales of weights 0..32 and 32..64.
    pub d: [f16; 2],
    /// Kept value `k` in the low nibble of `qs[k]` (k < 16) or the high nibble of `qs[k - 16]`.
    pub qs: [u8; 16],
    /// Position (0..4) of kept value `8 c + j` in bits `2c..2c+2` of `idx[j]`.
    pub idx: [u8; 8],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0S24>() == 28);

/// 2:4 sparse Q8_0: `x = d q` at the kept positions, 0 elsewhere; 5.5 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_0S24 {
    /// Scales of weights 0..32 and 32..64.
    pub d: [f16; 2],
    pub qs: [i8; 32],
    pub idx: [u8; 8],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0S24>() == 44);

/// First weight of the chunk that chunk slot `c` (0..4) reads: A, C, B, D.
const CHUNK_START: [usize; 4] = [0, 32, 16, 48];

/// The weight index (0..64) of kept value `k` at position `pos` (0..4) in its group.
#[inline]
pub fn kept_weight(k: usize, pos: usize) -> usize {
    CHUNK_START[k / 8] + 4 * ((k % 8) / 2) + pos
}

/// The position of kept value `k` stored in `idx`.
#[inline]
pub fn kept_position(idx: &[u8; 8], k: usize) -> usize {
    ((idx[k % 8] >> (2 * (k / 8))) & 3) as usize
}

/// The two positions kept in a group of four: the two of largest magnitude (the first on
/// ties; NaN counts as largest), in increasing order.
fn keep_two(g: &[f32]) -> [usize; 2] {
    let mag = |i: usize| if g[i].is_nan() { f32::INFINITY } else { g[i].abs() };
    let mut order = [0usize, 1, 2, 3];
    // Stable: equal magnitudes keep the lower position first.
    order.sort_by(|&a, &b| mag(b).total_cmp(&mag(a)));
    let (a, b) = (order[0].min(order[1]), order[0].max(order[1]));
    [a, b]
}

/// The positions kept in 64 weights (see [`keep_two`]), packed, and the weights with the
/// others set to zero.
pub(super) fn select(x: &[f32]) -> ([u8; 8], [f32; QK_S24]) {
    let mut idx = [0u8; 8];
    let mut pruned = [0f32; QK_S24];
    for k in (0..QK).step_by(2) {
        let g = kept_weight(k, 0);
        for (t, p) in keep_two(&x[g..g + 4]).into_iter().enumerate() {
            idx[(k + t) % 8] |= (p as u8) << (2 * ((k + t) / 8));
            pruned[g + p] = x[g + p];
        }
    }
    (idx, pruned)
}

/// The half (0: weights 0..32, 1: 32..64) that kept value `k` lies in: its scale's index.
#[inline]
pub fn kept_half(k: usize) -> usize {
    (k / 8) % 2
}

/// Encodes 64 weights: the kept positions, then each half of the pruned weights quantized by
/// `dense(half, weights) -> (d, q)` (the dense type's block quantizer: a scale and the 32
/// stored integers), of which the kept ones are taken in kept order. Returns `(d, q, idx)`.
pub(super) fn encode(x: &[f32], mut dense: impl FnMut(usize, &[f32]) -> (f16, [i32; QK])) -> ([f16; 2], [i32; QK], [u8; 8]) {
    let (idx, pruned) = select(x);
    let (d0, q0) = dense(0, &pruned[..QK]);
    let (d1, q1) = dense(1, &pruned[QK..]);
    let q = std::array::from_fn(|k| {
        let at = kept_weight(k, kept_position(&idx, k));
        if at < QK { q0[at] } else { q1[at - QK] }
    });
    ([d0, d1], q, idx)
}

/// Packs 32 values < 16 as Q4_0 does (kept `k` low nibble of byte `k`, `k + 16` high).
pub(super) fn pack_nibbles(q: &[i32; QK]) -> [u8; 16] {
    legacy::pack_nibbles(&q.map(|v| v as u8))
}

/// Writes kept value `k` (`value(k)`) at its position in `y` (64 weights), zeros elsewhere.
/// Two values of a group at the same position (never written by smelt; a hand-made file could)
/// add up, as in the dot-product kernels.
fn scatter(idx: &[u8; 8], y: &mut [f32], value: impl Fn(usize) -> f32) {
    y.fill(0.0);
    for k in 0..QK {
        y[kept_weight(k, kept_position(idx, k))] += value(k);
    }
}

pub(super) fn quantize_q4_0_s24(src: &[f32], dst: &mut [u8]) {
    write_blocks(src, dst, QK_S24, |x| {
        let (d, q, idx) = encode(x, |_, h| {
            let mut b = [0u8; 18];
            legacy::quantize_q4_0(h, &mut b);
            let b: BlockQ4_0 = bytemuck::pod_read_unaligned(&b);
            (b.d, std::array::from_fn(|j| legacy::unpack_nibble(&b.qs, j) as i32))
        });
        BlockQ4_0S24 { d, qs: pack_nibbles(&q), idx }
    });
}

pub(super) fn dequantize_q4_0_s24(src: &[u8], dst: &mut [f32]) {
    for (b, y) in read_blocks::<BlockQ4_0S24>(src).zip(dst.chunks_exact_mut(QK_S24)) {
        scatter(&b.idx, y, |k| b.d[kept_half(k)].to_f32() * (legacy::unpack_nibble(&b.qs, k) as i32 - 8) as f32);
    }
}

pub(super) fn quantize_q8_0_s24(src: &[f32], dst: &mut [u8]) {
    write_blocks(src, dst, QK_S24, |x| {
        let (d, q, idx) = encode(x, |_, h| {
            let mut b = [0u8; 34];
            legacy::quantize_q8_0(h, &mut b);
            let b: BlockQ8_0 = bytemuck::pod_read_unaligned(&b);
            (b.d, b.qs.map(|v| v as i32))
        });
        BlockQ8_0S24 { d, qs: q.map(|v| v as i8), idx }
    });
}

pub(super) fn dequantize_q8_0_s24(src: &[u8], dst: &mut [f32]) {
    for (b, y) in read_blocks::<BlockQ8_0S24>(src).zip(dst.chunks_exact_mut(QK_S24)) {
        scatter(&b.idx, y, |k| b.d[kept_half(k)].to_f32() * b.qs[k] as f32);
    }
}

/// Whether `row` (a whole number of 64-weight blocks) has at most two non-zeros in every
/// aligned group of four: the rows a 2:4 sparse type stores without loss of positions.
pub fn is_2_4_sparse(row: &[f32]) -> bool {
    row.chunks_exact(4).all(|g| g.iter().filter(|v| **v != 0.0).count() <= 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_to_vec, quantize_to_vec, GgmlType};

    /// The layout in the module docs, written out by hand for one block: group `g` of the 64
    /// weights keeps positions `(g % 3, 3)` with values `g + 1` and `-(g + 1)`.
    #[test]
    fn the_layout_is_the_documented_one() {
        let mut x = [0f32; 64];
        for g in 0..16 {
            x[4 * g + g % 3] = (g + 1) as f32;
            x[4 * g + 3] = -((g + 1) as f32);
        }
        let mut b = [0u8; 44];
        quantize_q8_0_s24(&x, &mut b);
        let blk: BlockQ8_0S24 = bytemuck::pod_read_unaligned(&b);
        // Scales: the largest magnitude of each half over 127.
        assert_eq!([blk.d[0].to_f32(), blk.d[1].to_f32()], [f16::from_f32(8.0 / 127.0).to_f32(), f16::from_f32(16.0 / 127.0).to_f32()]);
        // Kept order A, C, B, D: kept 0..8 are groups 0..4, 8..16 groups 8..12, 16..24 groups
        // 4..8, 24..32 groups 12..16.
        let groups: Vec<usize> = (0..4).chain(8..12).chain(4..8).chain(12..16).collect();
        for (slot, &g) in groups.iter().enumerate() {
            let d = blk.d[g / 8].to_f32();
            let (k0, k1) = (2 * slot, 2 * slot + 1);
            assert_eq!((blk.qs[k0] as f32 * d).round(), (g + 1) as f32, "kept {k0}");
            assert_eq!((blk.qs[k1] as f32 * d).round(), -((g + 1) as f32), "kept {k1}");
            for (k, pos) in [(k0, g % 3), (k1, 3)] {
                assert_eq!(((blk.idx[k % 8] >> (2 * (k / 8))) & 3) as usize, pos, "position of kept {k}");
            }
        }
    }

    fn signal(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0 * if i % 29 == 0 { 5.0 } else { 1.0 }).collect()
    }

    fn prune_2_4(x: &[f32]) -> Vec<f32> {
        let mut y = x.to_vec();
        for g in y.chunks_exact_mut(4) {
            let keep = keep_two(g);
            (0..4).filter(|p| !keep.contains(p)).for_each(|p| g[p] = 0.0);
        }
        y
    }

    /// A 2:4 matrix in a sparse type holds the very values the dense type (the reference
    /// quantizer, checked against the `gguf` package) gives it; a dense matrix is stored as its
    /// magnitude 2:4 pruning.
    #[test]
    fn a_2_4_matrix_keeps_its_dense_twins_values() {
        let dense = signal(64 * 9);
        let sparse = prune_2_4(&dense);
        assert!(is_2_4_sparse(&sparse) && !is_2_4_sparse(&dense));
        for (ty, twin) in [(GgmlType::Q4_0_S24, GgmlType::Q4_0), (GgmlType::Q8_0_S24, GgmlType::Q8_0)] {
            let b = quantize_to_vec(ty, &sparse).unwrap();
            assert_eq!(b.len(), 9 * ty.block_bytes());
            let got = dequantize_to_vec(ty, &b).unwrap();
            let want = dequantize_to_vec(twin, &quantize_to_vec(twin, &sparse).unwrap()).unwrap();
            assert!(got.iter().zip(&want).all(|(a, b)| a == b), "{ty} differs from {twin}");
            assert_eq!(quantize_to_vec(ty, &dense).unwrap(), b, "{ty}: a dense row is stored as its magnitude 2:4 pruning");
        }
    }

    #[test]
    fn ties_keep_the_first_positions() {
        assert_eq!(keep_two(&[1.0, -1.0, 1.0, 1.0]), [0, 1]);
        assert_eq!(keep_two(&[0.0, 0.0, 0.0, 0.0]), [0, 1]);
        assert_eq!(keep_two(&[0.0, 2.0, 0.0, -3.0]), [1, 3]);
        assert_eq!(keep_two(&[f32::NAN, 0.0, 5.0, 0.0]), [0, 2]);
    }
}
