//! One tensor re-quantized: every row dequantized with the reference dequantizer and quantized
//! with the reference quantizer of the target type, rows split across threads, and the error of
//! what is written measured against what was read.

use std::ops::Range;
use std::sync::Mutex;

use smelt_formats::quant::{dequantize, quantize, quantize_weighted};
use smelt_formats::{GgmlType, QuantError, TensorInfo};
use smelt_kernels::pool::{Disjoint, ThreadPool};

use crate::CompressError;

/// A converted tensor: its bytes in the target type, the squared error of the written weights
/// against the input (`err2 = sum (w - q)^2`) and the input's energy (`x2 = sum w^2`), both in
/// f64, so that `sqrt(err2 / x2)` is the relative RMS error; with an importance vector `s` also
/// the importance-weighted error `werr2 = sum_ij s_j (w_ij - q_ij)^2` (else `werr2 = err2`).
#[derive(Debug)]
pub struct Converted {
    pub bytes: Vec<u8>,
    pub err2: f64,
    pub x2: f64,
    pub werr2: f64,
}

/// Re-quantizes `t` (its bytes are `data`) into `target`; rows must be whole blocks of both types
/// (the plan ensures it). With `importance` (one value per column, the tensor's imatrix entry)
/// every block's search minimizes the importance-weighted error
/// ([`smelt_formats::quant::quantize_weighted`]). A NaN or infinity in the input is an error: it
/// would make `x2` non-finite and the written weights garbage.
pub fn convert(pool: &ThreadPool, t: &TensorInfo, data: &[u8], target: GgmlType, importance: Option<&[f32]>) -> Result<Converted, CompressError> {
    let cols = t.row_len() as usize;
    let src_row = row_bytes(&t.name, t.ty, cols)?;
    let read = |r: Range<usize>, x: &mut [f32]| dequantize(t.ty, &data[r.start * src_row..r.end * src_row], x);
    convert_rows(pool, &t.name, t.n_rows() as usize, cols, target, importance, &read, None)
}

/// Quantizes `x` (`rows x cols` values in f32, row-major) into `target` as [`convert`] does, and
/// also returns the written values read back (`rows x cols`).
pub fn round_trip(pool: &ThreadPool, name: &str, x: &[f32], cols: usize, target: GgmlType, importance: Option<&[f32]>) -> Result<(Converted, Vec<f32>), CompressError> {
    let rows = x.len() / cols.max(1);
    let mut back = vec![0f32; rows * cols];
    let read = |r: Range<usize>, out: &mut [f32]| {
        out.copy_from_slice(&x[r.start * cols..r.end * cols]);
        Ok(())
    };
    let c = convert_rows(pool, name, rows, cols, target, importance, &read, Some(&mut back))?;
    Ok((c, back))
}

/// Reads a range of rows of a tensor into f32 values.
type ReadRows<'a> = dyn Fn(Range<usize>, &mut [f32]) -> Result<(), QuantError> + Sync + 'a;

fn row_bytes(name: &str, ty: GgmlType, cols: usize) -> Result<usize, CompressError> {
    ty.bytes_for(cols as u64).map(|b| b as usize).ok_or_else(|| CompressError::Quant { tensor: name.to_string(), source: QuantError::NotBlockMultiple { ty, n: cols, block: ty.block_elems() } })
}

/// The rows of a tensor, read into f32 by `read(rows, out)`, quantized into `target` in chunks of
/// rows across the pool; the values read back go to `back` when given.
#[allow(clippy::too_many_arguments)]
fn convert_rows(
    pool: &ThreadPool,
    name: &str,
    rows: usize,
    cols: usize,
    target: GgmlType,
    importance: Option<&[f32]>,
    read: &ReadRows,
    back: Option<&mut [f32]>,
) -> Result<Converted, CompressError> {
    let dst_row = row_bytes(name, target, cols)?;
    let mut out = vec![0u8; rows * dst_row];
    let sink = Disjoint::new(&mut out);
    let back_sink = back.map(Disjoint::new);
    let acc = Mutex::new((0.0f64, 0.0f64, 0.0f64, None));
    let chunk = rows.div_ceil(pool.n_threads() * 8).max(1);
    pool.for_chunks(rows, chunk, &|r| {
        let n = r.len() * cols;
        let (mut x, mut q) = (vec![0f32; n], vec![0f32; n]);
        // SAFETY: row chunks are disjoint.
        let o = unsafe { sink.slice(r.start * dst_row..r.end * dst_row) };
        let res = read(r.clone(), &mut x)
            .and_then(|()| match importance {
                Some(imp) => quantize_weighted(target, &x, &imp.repeat(r.len()), o),
                None => quantize(target, &x, o),
            })
            .and_then(|()| dequantize(target, o, &mut q));
        let mut a = acc.lock().unwrap_or_else(|e| e.into_inner());
        match res {
            Ok(()) => {
                for (i, (p, v)) in x.iter().zip(&q).enumerate() {
                    let e2 = ((p - v) as f64).powi(2);
                    a.0 += e2;
                    a.1 += (*p as f64).powi(2);
                    a.2 += importance.map_or(1.0, |imp| imp[i % cols] as f64) * e2;
                }
                if let Some(b) = &back_sink {
                    // SAFETY: row chunks are disjoint.
                    unsafe { b.slice(r.start * cols..r.end * cols) }.copy_from_slice(&q);
                }
            }
            Err(e) => a.3 = Some(e),
        }
    });
    let (err2, x2, werr2, failure) = acc.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(source) = failure {
        return Err(CompressError::Quant { tensor: name.to_string(), source });
    }
    // A NaN or infinity anywhere in the input makes the sum of squares non-finite.
    if !x2.is_finite() {
        return Err(CompressError::NonFinite { tensor: name.to_string() });
    }
    Ok(Converted { bytes: out, err2, x2, werr2 })
}
