//! Reference quantize/dequantize of the 32-element "legacy" ggml blocks: Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0, Q8_1. Arithmetic order follows ggml's `quantize_row_*_ref` and the `gguf` Python
//! package so that results agree bit for bit (no fused multiply-add, f32 throughout).

use half::f16;

use super::blocks::*;
use super::{read_blocks, write_blocks};

/// The signed value of largest magnitude (first one on ties), as ggml picks it.
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn inv(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

/// Packs 32 values < 16 (low nibbles of elements 0..16, high nibbles of 16..32).
pub(super) fn pack_nibbles(q: &[u8; QK]) -> [u8; QK / 2] {
    std::array::from_fn(|j| (q[j] & 0xF) | ((q[j + QK / 2] & 0xF) << 4))
}

/// Bit 4 of each of 32 values, as a little-endian u32.
fn pack_high_bits(q: &[u8; QK]) -> [u8; 4] {
    let h = q.iter().enumerate().fold(0u32, |h, (j, &v)| h | (((v as u32 >> 4) & 1) << j));
    h.to_le_bytes()
}

pub(super) fn unpack_nibble(qs: &[u8; QK / 2], j: usize) -> u8 {
    if j < QK / 2 { qs[j] & 0xF } else { qs[j - QK / 2] >> 4 }
}

/// Q4_0: `d = max / -8` (the signed absmax maps to -8), `q = min(15, trunc(x/d + 8.5))`.
pub(super) fn quantize_q4_0(src: &[f32], dst: &mut [u8]) {
    write_blocks(src, dst, QK, |x| {
        let d = signed_absmax(x) / -8.0;
        let id = inv(d);
        let q: [u8; QK] = std::array::from_fn(|j| ((x[j] * id + 8.5) as i32).clamp(0, 15) as u8);
        BlockQ4_0 { d: f16::from_f32(d), qs: pack_nibbles(&q) }
    });
}

pub(super) fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in read_blocks::<BlockQ4_0>(src).zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (j, o) in y.iter_mut().enumerate() {
            *o = d * (unpack_nibble(&b.qs, j) as i32 - 8) as f32;
        }
    }
}

/// Q4_1: `d = (max - min) / 15`, `m = min`, `q = min(15, trunc((x - min)/d + 0.5))`.
pub(super) fn quantize_q4_1(src: &[f32], dst: &mut [u8]) {
    write_blocks(src, dst, QK, |x| {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inv(d);
        let q: [u8; QK] = std::array::from_fn(|j| (((x[j] - min) * id + 0.5) as i32).clamp(0, 15) as u8);
        BlockQ4_1 { d: f16::from_f32(d), m: f16::from_f32(min), qs: pack_nibbles(&q) }
    });
}

pub(super) fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in read_blocks::<BlockQ4_1>(src).zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for (j, o) in y.iter_mut().enumerate() {
            *o = d * unpack_nibble(&b.qs, j) as f32 + m;
        }
    }
}

/// Q5_0: `d = max / -16`, `q = min(31, trunc(x/d + 16.5))`.
pub(super) fn quantize_q5_0(src: &[f32], dst: &mut [u8]) {
    write_blocks(src, dst, QK, |x| {
        let d = signed_absmax(x) / -16.0;
        let id = inv(d);
        let q: [u8; QK] = std::array::from_fn(|j| ((x[j] * id + 16.5) as i32).clamp(0, 31) as u8);
        BlockQ5_0 { d: f16::from_f32(d), qh: pack_high_bits(&q), qs: pack_nibbles(&q) }
    });
}

fn q5_value(qh: [u8; 4], qs: &[u8; QK / 2], j: usize) -> u8 {
    let h = ((u32::from_le_bytes(qh) >> j) & 1) as u8;
    unpack_nibble(qs, j) | (h << 4)
}

pub(super) fn dequantize_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in read_blocks::<BlockQ5_0>(src).zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (j, o) in y.iter_mut().enumerate() {
            *o = d * (q5_value(b.qh, &b.qs, j) as i32 - 16) as f32;
        }
    }
}

/// Q5_1: `d = (max - min) / 31`, `m = min`, `q = min(31, trunc((x - min)/d + 0.5))`.
pub(super) fn quantize_q5_1(src: &[f32], dst: &mut [u8]) {
    write_blocks(src, dst, QK, |x| {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inv(d);
        let q: [u8; QK] = std::array::from_fn(|j| (((x[j] - min) * id + 0.5) as i32).clamp(0, 31) as u8);
        BlockQ5_1 { d: f16::from_f32(d), m: f16::from_f32(min), qh: pack_high_bits(&q), qs: pack_nibbles(&q) }
    });
}

pub(super) fn dequantize_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in read_blocks::<BlockQ5_1>(src).zip(dst.chunks_exact_mut(QK)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for (j, o) in y.iter_mut().enumerate() {
            *o = d * q5_value(b.qh, &b.qs, j) as f32 + m;
        }
    }
}

/// Symmetric 8-bit: `d = absmax / 127`, `q = round(x / d)` (half away from zero, like `roundf`).
fn q8(x: &[f32]) -> (f32, [i8; QK]) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = inv(d);
    (d, std::array::from_fn(|j| (x[j] * id).round() as i8))
}

pub(super) fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    write_blocks(src, dst, QK, |x| {
        let (d, qs) = q8(x);
        BlockQ8_0 { d: f16::from_f32(d), qs }
    });
}

pub(super) fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in read_blocks::<BlockQ8_0>(src).zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in y.iter_mut().zip(b.qs.iter()) {
            *o = q as f32 * d;
        }
    }
}

/// Q8_1 as Q8_0 plus `s = d * sum(q)`.
pub(super) fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    write_blocks(src, dst, QK, |x| {
        let (d, qs) = q8(x);
        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
        BlockQ8_1 { d: f16::from_f32(d), s: f16::from_f32(sum as f32 * d), qs }
    });
}

pub(super) fn dequantize_q8_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in read_blocks::<BlockQ8_1>(src).zip(dst.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in y.iter_mut().zip(b.qs.iter()) {
            *o = q as f32 * d;
        }
    }
}
