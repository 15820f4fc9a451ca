//! Fast dequantization of whole rows to f32, for the matrix-matrix path (prompts): weights are
//! widened a chunk at a time and multiplied with an f32 GEMM. Each kernel returns exactly what
//! the reference dequantizer in `smelt-formats` returns (same products, same order, no fused
//! multiply-add), which the conformance test checks bit for bit.

#[cfg(target_arch = "x86_64")]
mod avx2;

use smelt_formats::GgmlType;

use crate::cpu::{self, Isa};

/// `src` holds whole blocks of the kernel's type; `dst` has room for their elements.
///
/// # Safety
/// `src.len()` is a multiple of the block size in bytes, `dst.len()` equals the element count,
/// and the kernel's ISA is available.
pub type DequantFn = unsafe fn(src: &[u8], dst: &mut [f32]);

/// The SIMD dequantizer of `ty` for `isa`, if there is one.
pub fn kernel(isa: Isa, ty: GgmlType) -> Option<DequantFn> {
    if !cpu::available().contains(&isa) {
        return None;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::kernel(ty),
        // NEON dequantizers are still to come: the reference runs there.
        _ => {
            let _ = ty;
            None
        }
    }
}

/// Dequantizes `src` into `dst` with the fastest kernel of this machine, or the reference.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), smelt_formats::QuantError> {
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    match kernel(cpu::best(), ty) {
        Some(f) if dst.len().is_multiple_of(be) && src.len() == dst.len() / be * bb => {
            // SAFETY: geometry checked above; the ISA comes from run-time detection.
            unsafe { f(src, dst) };
            Ok(())
        }
        _ => smelt_formats::quant::dequantize(ty, src, dst),
    }
}
