//! One tensor re-quantized: every row dequantized with the reference dequantizer and quantized
//! with the reference quantizer of the target type, rows split across threads, and the error of
//! what is written measured against what was read.

use std::sync::Mutex;

use smelt_formats::quant::{dequantize, quantize, quantize_weighted};
use smelt_formats::{GgmlType, TensorInfo};
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
    let quant_err = |source| CompressError::Quant { tensor: t.name.clone(), source };
    let cols = t.row_len() as usize;
    let rows = t.n_rows() as usize;
    let row_bytes = |ty: GgmlType| ty.bytes_for(cols as u64).map(|b| b as usize).ok_or_else(|| quant_err(smelt_formats::QuantError::NotBlockMultiple { ty, n: cols, block: ty.block_elems() }));
    let (src_row, dst_row) = (row_bytes(t.ty)?, row_bytes(target)?);
    let mut out = vec![0u8; rows * dst_row];
    let sink = Disjoint::new(&mut out);
    let acc = Mutex::new((0.0f64, 0.0f64, 0.0f64, None));
    let chunk = rows.div_ceil(pool.n_threads() * 8).max(1);
    pool.for_chunks(rows, chunk, &|r| {
        let n = r.len() * cols;
        let (mut x, mut back) = (vec![0f32; n], vec![0f32; n]);
        // SAFETY: row chunks are disjoint.
        let o = unsafe { sink.slice(r.start * dst_row..r.end * dst_row) };
        let res = dequantize(t.ty, &data[r.start * src_row..r.end * src_row], &mut x)
            .and_then(|()| match importance {
                Some(imp) => quantize_weighted(target, &x, &imp.repeat(r.len()), o),
                None => quantize(target, &x, o),
            })
            .and_then(|()| dequantize(target, o, &mut back));
        let mut a = acc.lock().unwrap_or_else(|e| e.into_inner());
        match res {
            Ok(()) => {
                for (i, (p, q)) in x.iter().zip(&back).enumerate() {
                    let e2 = ((p - q) as f64).powi(2);
                    a.0 += e2;
                    a.1 += (*p as f64).powi(2);
                    a.2 += importance.map_or(1.0, |imp| imp[i % cols] as f64) * e2;
                }
            }
            Err(e) => a.3 = Some(e),
        }
    });
    let (err2, x2, werr2, failure) = acc.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = failure {
        return Err(quant_err(e));
    }
    // A NaN or infinity anywhere in the input makes the sum of squares non-finite.
    if !x2.is_finite() {
        return Err(CompressError::NonFinite { tensor: t.name.clone() });
    }
    Ok(Converted { bytes: out, err2, x2, werr2 })
}
