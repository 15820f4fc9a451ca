//! Activation rows in the format a weight type's kernels read (see [`crate::dot`]): F32 as is,
//! or quantized once per product to Q8_0, Q8_1 or Q8_K with the reference quantizers of
//! `smelt-formats` (cheap next to the matrix product: one row against a whole matrix).

use smelt_formats::quant;
use smelt_formats::GgmlType;

use crate::KernelError;

/// Converts `rows` rows of `cols` activations (`x`, row-major) to `fmt`, into `out`
/// (resized; its capacity is reused across calls).
pub fn convert_rows(fmt: GgmlType, x: &[f32], cols: usize, out: &mut Vec<u8>) -> Result<(), KernelError> {
    if cols == 0 || x.len() % cols != 0 {
        return Err(KernelError::Shape(format!("{} activations are not whole rows of {cols}", x.len())));
    }
    let (be, bb) = (fmt.block_elems(), fmt.block_bytes());
    if cols % be != 0 {
        return Err(KernelError::NotBlockMultiple { ty: fmt, n: cols, block: be });
    }
    let row_bytes = cols / be * bb;
    out.clear();
    if fmt == GgmlType::F32 {
        out.extend_from_slice(bytemuck::cast_slice(x));
        return Ok(());
    }
    out.resize(x.len() / cols * row_bytes, 0);
    for (src, dst) in x.chunks_exact(cols).zip(out.chunks_exact_mut(row_bytes)) {
        quant::quantize(fmt, src, dst).map_err(|e| KernelError::Shape(e.to_string()))?;
    }
    Ok(())
}
