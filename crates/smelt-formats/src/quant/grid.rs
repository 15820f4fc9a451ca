//! A block's representable values, decided once and then used value by value: what GPTQ needs
//! to quantize a ggml block column by column.
//!
//! [`BlockGrid::decide`] runs the type's (importance-weighted, or reference) block quantizer on
//! the block's current values and keeps the block's scales as stored. Every element then has the
//! grid `value = a_s * q + b_s` for its sub-block `s` and the integer levels `q` of the type
//! (`value = a * KVALUES[q]` for IQ4_NL). [`BlockGrid::round`] gives the nearest grid value of any
//! later value of an element, and [`BlockGrid::encode`] writes the block with the chosen levels
//! under the decided scales, as the reference dequantizer reads it.

use super::blocks::*;
use super::{kquants, quantize, quantize_weighted, GgmlType, QuantError};

/// Types [`BlockGrid`] handles (every type with a weighted quantizer).
pub fn supports_grid(ty: GgmlType) -> bool {
    super::weighted::supports_weighted(ty)
}

/// The decided scales of one block.
#[derive(Clone, Debug)]
pub struct BlockGrid {
    ty: GgmlType,
    /// The block's bytes as the quantizer wrote them (its scales; levels replaced by `encode`).
    bytes: Vec<u8>,
    /// Elements per sub-block (the block's own size when it has one scale).
    sub: usize,
    /// Per sub-block: `value = a q + b`.
    a: Vec<f32>,
    b: Vec<f32>,
    qmin: i32,
    qmax: i32,
}

fn read<B: bytemuck::Pod>(b: &[u8]) -> B {
    bytemuck::pod_read_unaligned(b)
}

impl BlockGrid {
    /// The scales the type's quantizer picks for the block `x` (one block of `ty`), weighted by
    /// `imp` (one importance per element) when given.
    pub fn decide(ty: GgmlType, x: &[f32], imp: Option<&[f32]>) -> Result<BlockGrid, QuantError> {
        if !supports_grid(ty) {
            return Err(QuantError::Unsupported { ty, op: "block grid", supported: "the types with a weighted quantizer".into() });
        }
        let mut bytes = vec![0u8; ty.block_bytes()];
        match imp {
            Some(w) => quantize_weighted(ty, x, w, &mut bytes)?,
            None => quantize(ty, x, &mut bytes)?,
        }
        let one = |a: f32, b: f32, qmin: i32, qmax: i32, sub: usize| (vec![a], vec![b], qmin, qmax, sub);
        let (a, b, qmin, qmax, sub) = match ty {
            GgmlType::Q4_0 => one(read::<BlockQ4_0>(&bytes).d.to_f32(), 0.0, -8, 7, QK),
            GgmlType::Q5_0 => one(read::<BlockQ5_0>(&bytes).d.to_f32(), 0.0, -16, 15, QK),
            GgmlType::Q8_0 => one(read::<BlockQ8_0>(&bytes).d.to_f32(), 0.0, -128, 127, QK),
            GgmlType::Q4_1 => {
                let blk = read::<BlockQ4_1>(&bytes);
                one(blk.d.to_f32(), blk.m.to_f32(), 0, 15, QK)
            }
            GgmlType::Q5_1 => {
                let blk = read::<BlockQ5_1>(&bytes);
                one(blk.d.to_f32(), blk.m.to_f32(), 0, 31, QK)
            }
            GgmlType::IQ4_NL => one(read::<BlockIq4Nl>(&bytes).d.to_f32(), 0.0, 0, 15, QK),
            GgmlType::Q2_K => {
                let blk = read::<BlockQ2K>(&bytes);
                let (d, m) = (blk.d.to_f32(), blk.dmin.to_f32());
                (blk.scales.iter().map(|s| d * (s & 0xF) as f32).collect(), blk.scales.iter().map(|s| -m * (s >> 4) as f32).collect(), 0, 3, 16)
            }
            GgmlType::Q3_K => {
                let blk = read::<BlockQ3K>(&bytes);
                let d = blk.d.to_f32();
                (q3k_scales(&blk.scales).iter().map(|&s| d * s as f32).collect(), vec![0.0; 16], -4, 3, 16)
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                let (d, m, scales) = if ty == GgmlType::Q4_K {
                    let blk = read::<BlockQ4K>(&bytes);
                    (blk.d.to_f32(), blk.dmin.to_f32(), blk.scales)
                } else {
                    let blk = read::<BlockQ5K>(&bytes);
                    (blk.d.to_f32(), blk.dmin.to_f32(), blk.scales)
                };
                let sm: Vec<(u8, u8)> = (0..8).map(|j| get_scale_min_k4(j, &scales)).collect();
                let qmax = if ty == GgmlType::Q4_K { 15 } else { 31 };
                (sm.iter().map(|&(s, _)| d * s as f32).collect(), sm.iter().map(|&(_, mn)| -m * mn as f32).collect(), 0, qmax, 32)
            }
            GgmlType::Q6_K => {
                let blk = read::<BlockQ6K>(&bytes);
                let d = blk.d.to_f32();
                (blk.scales.iter().map(|&s| d * s as f32).collect(), vec![0.0; 16], -32, 31, 16)
            }
            _ => unreachable!("supports_grid lists the types handled here"),
        };
        Ok(BlockGrid { ty, bytes, sub, a, b, qmin, qmax })
    }

    /// The level and value nearest to `v` for element `i` of the block.
    pub fn round(&self, i: usize, v: f32) -> (i32, f32) {
        let s = i / self.sub;
        let (a, b) = (self.a[s], self.b[s]);
        if self.ty == GgmlType::IQ4_NL {
            let q = (0..16).min_by(|&p, &r| (a * KVALUES_IQ4NL[p] as f32 - v).abs().total_cmp(&(a * KVALUES_IQ4NL[r] as f32 - v).abs())).unwrap_or(0);
            return (q as i32, a * KVALUES_IQ4NL[q] as f32);
        }
        let q = if a != 0.0 { (((v - b) / a).round() as i32).clamp(self.qmin, self.qmax) } else { 0.max(self.qmin).min(self.qmax) };
        (q, a * q as f32 + b)
    }

    /// The block's bytes with `levels` (one per element, from [`BlockGrid::round`]) under the
    /// decided scales.
    pub fn encode(&self, levels: &[i32], out: &mut [u8]) {
        let u = |off: i32| -> Vec<u8> { levels.iter().map(|&q| (q + off) as u8).collect() };
        let put = |out: &mut [u8], blk: &dyn Fn() -> Vec<u8>| out.copy_from_slice(&blk());
        match self.ty {
            GgmlType::Q4_0 => put(out, &|| {
                let mut blk = read::<BlockQ4_0>(&self.bytes);
                blk.qs = nibbles(&u(8));
                bytemuck::bytes_of(&blk).to_vec()
            }),
            GgmlType::Q4_1 => put(out, &|| {
                let mut blk = read::<BlockQ4_1>(&self.bytes);
                blk.qs = nibbles(&u(0));
                bytemuck::bytes_of(&blk).to_vec()
            }),
            GgmlType::Q5_0 => put(out, &|| {
                let mut blk = read::<BlockQ5_0>(&self.bytes);
                let q = u(16);
                (blk.qs, blk.qh) = (nibbles(&q), high_bits(&q));
                bytemuck::bytes_of(&blk).to_vec()
            }),
            GgmlType::Q5_1 => put(out, &|| {
                let mut blk = read::<BlockQ5_1>(&self.bytes);
                let q = u(0);
                (blk.qs, blk.qh) = (nibbles(&q), high_bits(&q));
                bytemuck::bytes_of(&blk).to_vec()
            }),
            GgmlType::Q8_0 => put(out, &|| {
                let mut blk = read::<BlockQ8_0>(&self.bytes);
                blk.qs = std::array::from_fn(|j| levels[j] as i8);
                bytemuck::bytes_of(&blk).to_vec()
            }),
            GgmlType::IQ4_NL => put(out, &|| {
                let mut blk = read::<BlockIq4Nl>(&self.bytes);
                blk.qs = nibbles(&u(0));
                bytemuck::bytes_of(&blk).to_vec()
            }),
            _ => out.copy_from_slice(&kquants::with_levels(self.ty, &self.bytes, levels)),
        }
    }
}

/// Low nibbles of elements 0..16, high nibbles of 16..32.
fn nibbles(q: &[u8]) -> [u8; QK / 2] {
    std::array::from_fn(|j| (q[j] & 0xF) | ((q[j + QK / 2] & 0xF) << 4))
}

/// Bit 4 of each of 32 values, little-endian.
fn high_bits(q: &[u8]) -> [u8; 4] {
    q.iter().enumerate().fold(0u32, |h, (j, &v)| h | (((v as u32 >> 4) & 1) << j)).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize;

    /// Rounding every element against the grid of its own block and encoding gives exactly the
    /// block the quantizer wrote (the quantizer re-rounds against its stored scales too), and
    /// the encoded block dequantizes to the grid values `round` returned.
    #[test]
    fn round_then_encode_reproduces_the_quantizer_and_its_values() {
        let mut s = 99u32;
        let x: Vec<f32> = (0..256)
            .map(|i| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * (1.0 + (i % 9) as f32) * 0.03
            })
            .collect();
        let imp: Vec<f32> = (0..256).map(|i| 1.0 + (i % 5) as f32).collect();
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::IQ4_NL, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
            let n = ty.block_elems();
            for b in 0..256 / n {
                let (xb, wb) = (&x[b * n..(b + 1) * n], &imp[b * n..(b + 1) * n]);
                let g = BlockGrid::decide(ty, xb, Some(wb)).unwrap();
                let (levels, values): (Vec<i32>, Vec<f32>) = xb.iter().enumerate().map(|(i, &v)| g.round(i, v)).unzip();
                let mut out = vec![0u8; ty.block_bytes()];
                g.encode(&levels, &mut out);
                let mut back = vec![0f32; n];
                dequantize(ty, &out, &mut back).unwrap();
                assert_eq!(back, values, "{ty} block {b}: encoded levels dequantize to the grid values");
                let mut direct = vec![0u8; ty.block_bytes()];
                quantize_weighted(ty, xb, wb, &mut direct).unwrap();
                let mut dback = vec![0f32; n];
                dequantize(ty, &direct, &mut dback).unwrap();
                let err = |y: &[f32]| xb.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
                assert!(err(&back) <= err(&dback) * 1.0001 + 1e-12, "{ty} block {b}: rounding to the grid is no worse than the quantizer's levels");
            }
        }
    }
}
