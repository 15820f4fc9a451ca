//! Activation rows in the format a weight type's kernels read (see [`crate::dot`]).
//!
//! Activations are converted once per matrix product (one row against a whole matrix), so the
//! conversion is cheap next to the product; what matters is that the format makes the inner
//! loop cheap:
//!
//! - [`ActFormat::F32`]: as is, for float weights.
//! - [`ActFormat::Q8Sum`]: smelt's own 32-element block (never written to files): an f32 scale
//!   `d`, the f32 block sum `s = d * sum(q)`, and 32 signed bytes `q = round(x / d)`,
//!   `d = max|x| / 127`. Every 32-element weight type is `w_i = a q_i + c` with unsigned `q_i`
//!   (`c` = `-8d` for Q4_0, `-16d` for Q5_0, the min `m` for Q4_1/Q5_1, 0 otherwise), so
//!   `sum_i w_i x_i = a d sum_i q_i y_i + c s`: one unsigned-by-signed integer dot product and
//!   one scalar multiply-add per block, with no f16 conversion of the activation scale. (ggml
//!   uses Q8_0 / Q8_1 here, with f16 scales and sums.)
//! - [`ActFormat::Q8K`]: ggml's Q8_K (256 elements, f32 scale, 16-element sums) for K-quants.

use bytemuck::{Pod, Zeroable};
use smelt_formats::quant::{self, blocks::QK};
use smelt_formats::GgmlType;

use crate::KernelError;

/// The activation block of the 32-element weight types (see the module docs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8Sum {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8Sum>() == 40);

/// Formats activations take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActFormat {
    F32,
    Q8Sum,
    Q8K,
}

impl ActFormat {
    pub fn name(self) -> &'static str {
        match self {
            ActFormat::F32 => "F32",
            ActFormat::Q8Sum => "Q8Sum",
            ActFormat::Q8K => "Q8_K",
        }
    }

    pub fn block_elems(self) -> usize {
        match self {
            ActFormat::F32 => 1,
            ActFormat::Q8Sum => QK,
            ActFormat::Q8K => 256,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            ActFormat::F32 => 4,
            ActFormat::Q8Sum => 40,
            ActFormat::Q8K => 292,
        }
    }

    /// Bytes of a row of `n` activations, or an error if `n` is not a whole number of blocks.
    pub fn row_bytes(self, n: usize) -> Result<usize, KernelError> {
        let be = self.block_elems();
        if !n.is_multiple_of(be) {
            return Err(KernelError::ActNotBlockMultiple { fmt: self.name(), n, block: be });
        }
        Ok(n / be * self.block_bytes())
    }

    /// Quantizes one row (`x.len()` a multiple of the block size, `out` exactly
    /// [`ActFormat::row_bytes`] long).
    fn quantize_row(self, x: &[f32], out: &mut [u8]) {
        match self {
            ActFormat::F32 => out.copy_from_slice(bytemuck::cast_slice(x)),
            ActFormat::Q8K => {
                // Lengths are checked by `convert_rows`.
                let _ = quant::quantize(GgmlType::Q8_K, x, out);
            }
            ActFormat::Q8Sum => quantize_q8sum_row(x, out),
        }
    }

    /// The values the kernels see (for oracles and tests): `d q` per element.
    pub fn dequantize_row(self, bytes: &[u8]) -> Result<Vec<f32>, KernelError> {
        let bad = || KernelError::Shape(format!("{} bytes are not whole {} blocks", bytes.len(), self.name()));
        if !bytes.len().is_multiple_of(self.block_bytes()) {
            return Err(bad());
        }
        Ok(match self {
            ActFormat::F32 => bytemuck::pod_collect_to_vec(bytes),
            ActFormat::Q8K => quant::dequantize_to_vec(GgmlType::Q8_K, bytes).map_err(|_| bad())?,
            ActFormat::Q8Sum => bytes
                .chunks_exact(40)
                .flat_map(|b| {
                    let b: BlockQ8Sum = bytemuck::pod_read_unaligned(b);
                    b.qs.map(|q| b.d * q as f32)
                })
                .collect(),
        })
    }
}

impl std::fmt::Display for ActFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `d = max|x| / 127`, `q = round(x / d)` (half away from zero), `s = d * sum(q)`.
pub fn quantize_q8sum(x: &[f32]) -> BlockQ8Sum {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let qs: [i8; QK] = std::array::from_fn(|j| (x[j] * id).round() as i8);
    let sum: i32 = qs.iter().map(|&q| q as i32).sum();
    BlockQ8Sum { d, s: d * sum as f32, qs }
}

/// [`quantize_q8sum`] over a row of whole blocks (`x.len()` a multiple of 32, `out` 40 bytes a
/// block), with the best kernel of this machine; every ISA writes the same bytes.
pub fn quantize_q8sum_row(x: &[f32], out: &mut [u8]) {
    assert!(x.len().is_multiple_of(QK) && out.len() == x.len() / QK * 40, "quantize_q8sum_row: lengths");
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::best() == crate::cpu::Isa::Avx2 {
        // SAFETY: the AVX2 level (AVX2, FMA, F16C) detected; lengths asserted.
        return unsafe { avx2::quantize_q8sum_row(x, out) };
    }
    quantize_q8sum_row_scalar(x, out)
}

/// Scalar twin of [`quantize_q8sum_row`].
pub fn quantize_q8sum_row_scalar(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(40)) {
        ob.copy_from_slice(bytemuck::bytes_of(&quantize_q8sum(xb)));
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// `round(v)` half away from zero as Rust's `f32::round`, then `as i8`'s saturation (NaN
    /// to 0): truncate, add the sign where the dropped fraction is at least a half (`v - t` is
    /// exact), clamp to -128..=127.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn round_i8(v: __m256) -> __m256i {
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        let sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0));
        let frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0), _mm256_sub_ps(v, t));
        let half = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
        let r = _mm256_add_ps(t, _mm256_and_ps(half, _mm256_or_ps(sign, _mm256_set1_ps(1.0))));
        // NaN -> 0 (an ordered self-compare is false only for NaN), then the i8 range.
        let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
        let r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-128.0)), _mm256_set1_ps(127.0));
        _mm256_cvttps_epi32(r)
    }

    /// The blocks of [`super::quantize_q8sum`], eight lanes at a time: the same `amax`, `d`,
    /// `1 / d`, products, rounding and sum, so the bytes are identical.
    ///
    /// # Safety
    /// AVX2, FMA and F16C present (the AVX2 level); `x.len()` a multiple of 32, `out` 40 bytes
    /// per block.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_q8sum_row(x: &[f32], out: &mut [u8]) {
        let abs = _mm256_set1_ps(-0.0);
        for (xb, ob) in x.chunks_exact(32).zip(out.chunks_exact_mut(40)) {
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xb.as_ptr().add(8 * i)));
            let m = v.iter().fold(_mm256_setzero_ps(), |m, &x| _mm256_max_ps(_mm256_andnot_ps(abs, x), m));
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), m);
            // `f32::max` ignores NaN, as the scalar fold does (vmaxps returns its second operand).
            let amax = lanes.iter().fold(0.0f32, |a, &b| a.max(b));
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            let q: [__m256i; 4] = std::array::from_fn(|i| round_i8(_mm256_mul_ps(v[i], id)));
            let total = crate::dot::avx2::hsum_i32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
            // i32 -> i16 -> i8 (no saturation: already in range); the permute undoes the packs'
            // 128-bit lane interleaving.
            let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            ob[..4].copy_from_slice(&d.to_le_bytes());
            ob[4..8].copy_from_slice(&(d * total as f32).to_le_bytes());
            _mm256_storeu_si256(ob.as_mut_ptr().add(8) as *mut __m256i, bytes);
        }
    }
}

/// Converts `rows` rows of `cols` activations (`x`, row-major) to `fmt`, into `out` (resized;
/// its capacity is reused across calls).
pub fn convert_rows(fmt: ActFormat, x: &[f32], cols: usize, out: &mut Vec<u8>) -> Result<(), KernelError> {
    if cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(KernelError::Shape(format!("{} activations are not whole rows of {cols}", x.len())));
    }
    let row_bytes = fmt.row_bytes(cols)?;
    out.clear();
    out.resize(x.len() / cols * row_bytes, 0);
    for (src, dst) in x.chunks_exact(cols).zip(out.chunks_exact_mut(row_bytes)) {
        fmt.quantize_row(src, dst);
    }
    Ok(())
}

/// [`convert_rows`] with the rows spread over `pool`'s threads (several sequences' rows in a
/// batched decoding step: converting them one after another left the other threads waiting).
pub fn convert_rows_pool(pool: &crate::pool::ThreadPool, fmt: ActFormat, x: &[f32], cols: usize, out: &mut Vec<u8>) -> Result<(), KernelError> {
    let rows = x.len().checked_div(cols).unwrap_or(0);
    if rows < 2 || pool.n_threads() < 2 {
        return convert_rows(fmt, x, cols, out);
    }
    if !x.len().is_multiple_of(cols) {
        return Err(KernelError::Shape(format!("{} activations are not whole rows of {cols}", x.len())));
    }
    let row_bytes = fmt.row_bytes(cols)?;
    out.clear();
    out.resize(rows * row_bytes, 0);
    let sink = crate::pool::Disjoint::new(&mut out[..]);
    pool.for_chunks(rows, rows.div_ceil(pool.n_threads()), &|r| {
        for t in r {
            // SAFETY: each row's bytes are written by one task only.
            let dst = unsafe { sink.slice(t * row_bytes..(t + 1) * row_bytes) };
            fmt.quantize_row(&x[t * cols..(t + 1) * cols], dst);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8sum_row_kernels_write_the_same_bytes() {
        // Ties (x / d = k + 0.5 exactly), values just below a tie, zeros, a lone outlier,
        // an all-zero block, infinities and NaN.
        let mut x: Vec<f32> = (0..32 * 9).map(|i| ((i * 7919 % 257) as f32 - 128.0) * 0.37).collect();
        x[32..64].iter_mut().enumerate().for_each(|(j, v)| *v = (j as f32 - 15.5) * 2.0);
        x[64] = 127.0;
        x[65..96].iter_mut().enumerate().for_each(|(j, v)| *v = j as f32 + 0.5);
        x[96..128].fill(0.0);
        x[128] = 1e-3;
        x[129] = 0.49999997e-3;
        x[160] = f32::INFINITY;
        x[192] = f32::NAN;
        x[224] = -f32::INFINITY;
        x[256] = f32::MIN_POSITIVE;
        let (mut a, mut b) = (vec![0u8; 9 * 40], vec![1u8; 9 * 40]);
        quantize_q8sum_row_scalar(&x, &mut a);
        quantize_q8sum_row(&x, &mut b);
        for (blk, (ba, bb)) in a.chunks(40).zip(b.chunks(40)).enumerate() {
            assert_eq!(ba, bb, "block {blk}");
        }
    }

    #[test]
    fn q8sum_round_trips_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 31.5) * 0.01).collect();
        let mut out = Vec::new();
        convert_rows(ActFormat::Q8Sum, &x, 64, &mut out).unwrap();
        let y = ActFormat::Q8Sum.dequantize_row(&out).unwrap();
        for (blk, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let b: BlockQ8Sum = bytemuck::pod_read_unaligned(&out[40 * blk..40 * blk + 40]);
            for (a, v) in xs.iter().zip(ys) {
                assert!((a - v).abs() <= b.d * 0.5 + 1e-7);
            }
            let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
            assert_eq!(b.s, b.d * sum as f32);
        }
        assert!(convert_rows(ActFormat::Q8Sum, &x[..48], 48, &mut out).is_err());
    }
}
