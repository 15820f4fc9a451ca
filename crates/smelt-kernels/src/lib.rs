//! smelt-kernels: the compute kernels smelt's models run on.
//!
//! - [`cpu`]: instruction-set detection, once, at run time (no `target-cpu=native` needed).
//! - [`dot`]: dot products between a row of weights of any registry type and a row of
//!   activations, as a table of kernels per ISA, each beside its scalar reference twin.
//! - [`act`]: activation rows converted to the format the weight kernels expect.
//! - [`dequant`]: SIMD dequantization to f32, bit-identical to the reference, for prompts.
//! - [`matmul`]: matrix-vector and matrix-matrix products over those kernels, split across a
//!   [`pool::ThreadPool`]; dense f32/f16 matrix multiply through the `gemm` crate.
//! - [`mod@vec`]: f32 vector operations (attention's dot products and weighted sums).
//! - [`qgemm`]: int8 matrix products (per-channel weights, activations quantized per row).
//! - [`math`]: element-wise functions (exp, erf, GELU, softmax, residual LayerNorm).
//! - [`tolerance`]: the named error budgets kernels are tested against.

#![cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]

pub mod act;
pub mod cpu;
pub mod dequant;
pub mod dot;
pub mod math;
pub mod matmul;
pub mod qgemm;
pub mod pool;
pub mod tolerance;
pub mod vec;

use smelt_formats::GgmlType;

/// Errors from kernel entry points.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("{ty}: {n} elements is not a whole number of {block}-element blocks")]
    NotBlockMultiple { ty: GgmlType, n: usize, block: usize },
    #[error("{ty}: {n} elements need {need} bytes, the buffer has {have}")]
    ShortBuffer { ty: GgmlType, n: usize, need: usize, have: usize },
    #[error("{fmt} activations: {n} elements is not a whole number of {block}-element blocks")]
    ActNotBlockMultiple { fmt: &'static str, n: usize, block: usize },
    #[error("no dot-product kernel for {ty} weights; supported: {supported}")]
    NoKernel { ty: GgmlType, supported: String },
    #[error("matrix shapes do not fit: {0}")]
    Shape(String),
}

/// Checks that `have` bytes hold `n` elements of `ty`.
pub(crate) fn check_len(ty: GgmlType, n: usize, have: usize) -> Result<(), KernelError> {
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    if !n.is_multiple_of(be) {
        return Err(KernelError::NotBlockMultiple { ty, n, block: be });
    }
    let need = n / be * bb;
    if have < need {
        return Err(KernelError::ShortBuffer { ty, n, need, have });
    }
    Ok(())
}
