//! Plain floating-point "quantizations": F32, F16, BF16 (and F64 read-only), stored little-endian.

use half::f16;

pub(super) fn quantize_f32(src: &[f32], dst: &mut [u8]) {
    for (x, o) in src.iter().zip(dst.chunks_exact_mut(4)) {
        o.copy_from_slice(&x.to_le_bytes());
    }
}

pub(super) fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (b, o) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// f32 -> f16, round to nearest even (as ggml's `GGML_FP32_TO_FP16` and numpy's `astype`).
pub(super) fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    for (x, o) in src.iter().zip(dst.chunks_exact_mut(2)) {
        o.copy_from_slice(&f16::from_f32(*x).to_le_bytes());
    }
}

pub(super) fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (b, o) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

/// f32 -> bf16 as ggml's `ggml_compute_fp32_to_bf16`: NaNs become quiet NaNs keeping their sign
/// and top mantissa bits; everything else rounds to nearest even on the top 16 bits.
pub(super) fn f32_to_bf16_bits(x: f32) -> u16 {
    let n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        return ((n >> 16) | 64) as u16;
    }
    ((n as u64 + (0x7fff + ((n >> 16) & 1)) as u64) >> 16) as u16
}

pub(super) fn quantize_bf16(src: &[f32], dst: &mut [u8]) {
    for (x, o) in src.iter().zip(dst.chunks_exact_mut(2)) {
        o.copy_from_slice(&f32_to_bf16_bits(*x).to_le_bytes());
    }
}

/// bf16 -> f32 is exact: the 16 bits become the top half of the f32.
pub(super) fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (b, o) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
    }
}

/// F64 -> f32 (read-only type; rounding to nearest).
pub(super) fn dequantize_f64(src: &[u8], dst: &mut [f32]) {
    for (b, o) in src.chunks_exact(8).zip(dst.iter_mut()) {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        *o = f64::from_le_bytes(a) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nan() {
        // 1.0 + 2^-8 is exactly halfway between two bf16 values: ties to the even one (1.0).
        assert_eq!(f32_to_bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        // 1.0 + 3 * 2^-8 is halfway between 1.0078125 (odd) and 1.015625 (even): rounds up.
        assert_eq!(f32_to_bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        let nan = f32_to_bf16_bits(f32::from_bits(0x7f80_0001));
        assert_eq!(nan & 0x7f80, 0x7f80);
        assert_ne!(nan & 0x007f, 0);
        assert_eq!(f32_to_bf16_bits(f32::MAX), 0x7f80, "overflow rounds to infinity");
    }
}
