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
            ActFormat::Q8Sum => {
                for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(40)) {
                    ob.copy_from_slice(bytemuck::bytes_of(&quantize_q8sum(xb)));
                }
            }
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
