//! The quantization registry: one table of every ggml tensor type with its block geometry and,
//! where smelt has them, scalar reference quantize and dequantize functions.
//!
//! The references are the oracle for every fast kernel and are checked bit for bit against the
//! `gguf` Python package (see `crates/smelt-formats/tests/py/`). Layouts are those of ggml, so
//! files written here load in llama.cpp and vice versa.

pub mod blocks;
mod float;
pub mod grid;
pub mod iq;
pub mod iq_grids;
mod iq_quant;
mod iq4nl;
mod kquants;
mod legacy;
pub mod search;
pub mod sparse;
pub mod weighted;

pub use weighted::{quantize_weighted, supports_weighted};

use std::fmt;

use crate::error::QuantError;

/// Every tensor type ggml defines, with ggml's numeric ids (ids 4, 5, 31-33 and 36-38 were
/// removed upstream and stay unused), and smelt's own 2:4 sparse types (ids from `0x534D_2400`,
/// far from ggml's: files holding them are smelt-only, see [`GgmlType::is_smelt_only`]).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
    /// smelt-only: 2:4 sparse, kept values as Q4_0 (see [`sparse`]).
    Q4_0_S24 = 0x534D_2400,
    /// smelt-only: 2:4 sparse, kept values as Q8_0 (see [`sparse`]).
    Q8_0_S24 = 0x534D_2401,
}

/// Reference quantizer: `src.len()` is a multiple of the block size and `dst.len()` is exactly
/// the matching number of block bytes (checked by [`quantize`]).
pub type QuantizeFn = fn(src: &[f32], dst: &mut [u8]);
/// Reference dequantizer, the inverse geometry of [`QuantizeFn`].
pub type DequantizeFn = fn(src: &[u8], dst: &mut [f32]);

/// One row of the registry.
#[derive(Clone, Copy)]
pub struct TypeInfo {
    pub ty: GgmlType,
    /// ggml's name, e.g. `"Q4_K"`.
    pub name: &'static str,
    /// Elements per block (1 for plain types).
    pub block_elems: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    /// Scalar reference round-to-nearest quantizer; `None` where smelt has none.
    pub quantize: Option<QuantizeFn>,
    /// Scalar reference dequantizer; `None` where smelt has none.
    pub dequantize: Option<DequantizeFn>,
    /// One line for `--help` and reports.
    pub summary: &'static str,
}

impl TypeInfo {
    /// Storage cost in bits per weight, scales included.
    pub fn bits_per_weight(&self) -> f64 {
        (self.block_bytes * 8) as f64 / self.block_elems as f64
    }
}

impl fmt::Debug for TypeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypeInfo")
            .field("name", &self.name)
            .field("block_elems", &self.block_elems)
            .field("block_bytes", &self.block_bytes)
            .finish()
    }
}

macro_rules! row {
    ($ty:ident, $be:expr, $bb:expr, $q:expr, $dq:expr, $s:expr) => {
        TypeInfo {
            ty: GgmlType::$ty,
            name: stringify!($ty),
            block_elems: $be,
            block_bytes: $bb,
            quantize: $q,
            dequantize: $dq,
            summary: $s,
        }
    };
}

/// The registry, in ggml id order. Sizes match `ggml.c`'s `type_traits`.
pub static REGISTRY: &[TypeInfo] = &[
    row!(F32, 1, 4, Some(float::quantize_f32), Some(float::dequantize_f32), "32-bit float, lossless"),
    row!(F16, 1, 2, Some(float::quantize_f16), Some(float::dequantize_f16), "IEEE half precision"),
    row!(Q4_0, 32, 18, Some(legacy::quantize_q4_0), Some(legacy::dequantize_q4_0), "4-bit, one f16 scale per 32"),
    row!(Q4_1, 32, 20, Some(legacy::quantize_q4_1), Some(legacy::dequantize_q4_1), "4-bit, f16 scale and min per 32"),
    row!(Q5_0, 32, 22, Some(legacy::quantize_q5_0), Some(legacy::dequantize_q5_0), "5-bit, one f16 scale per 32"),
    row!(Q5_1, 32, 24, Some(legacy::quantize_q5_1), Some(legacy::dequantize_q5_1), "5-bit, f16 scale and min per 32"),
    row!(Q8_0, 32, 34, Some(legacy::quantize_q8_0), Some(legacy::dequantize_q8_0), "8-bit, one f16 scale per 32"),
    row!(Q8_1, 32, 36, Some(legacy::quantize_q8_1), Some(legacy::dequantize_q8_1), "8-bit with block sums (activations)"),
    row!(Q2_K, 256, 84, Some(kquants::quantize_q2_k), Some(kquants::dequantize_q2_k), "2-bit super-blocks, 4-bit scales and mins"),
    row!(Q3_K, 256, 110, Some(kquants::quantize_q3_k), Some(kquants::dequantize_q3_k), "3-bit super-blocks, 6-bit scales"),
    row!(Q4_K, 256, 144, Some(kquants::quantize_q4_k), Some(kquants::dequantize_q4_k), "4-bit super-blocks, 6-bit scales and mins"),
    row!(Q5_K, 256, 176, Some(kquants::quantize_q5_k), Some(kquants::dequantize_q5_k), "5-bit super-blocks, 6-bit scales and mins"),
    row!(Q6_K, 256, 210, Some(kquants::quantize_q6_k), Some(kquants::dequantize_q6_k), "6-bit super-blocks, 8-bit scales"),
    row!(Q8_K, 256, 292, Some(kquants::quantize_q8_k), Some(kquants::dequantize_q8_k), "8-bit super-blocks with sums (activations)"),
    row!(IQ2_XXS, 256, 66, Some(iq_quant::quantize_iq2_xxs), Some(iq::dequantize_iq2_xxs), "2.06-bit lattice, scale per 32"),
    row!(IQ2_XS, 256, 74, Some(iq_quant::quantize_iq2_xs), Some(iq::dequantize_iq2_xs), "2.31-bit lattice, scale per 16"),
    row!(IQ3_XXS, 256, 98, Some(iq_quant::quantize_iq3_xxs), Some(iq::dequantize_iq3_xxs), "3.06-bit lattice, scale per 32"),
    row!(IQ1_S, 256, 50, None, Some(iq::dequantize_iq1_s), "1.5-bit ternary lattice (read and run)"),
    row!(IQ4_NL, 32, 18, Some(iq4nl::quantize_iq4_nl), Some(iq4nl::dequantize_iq4_nl), "4-bit non-linear grid per 32"),
    row!(IQ3_S, 256, 110, Some(iq_quant::quantize_iq3_s), Some(iq::dequantize_iq3_s), "3.44-bit lattice with sign bits"),
    row!(IQ2_S, 256, 82, Some(iq_quant::quantize_iq2_s), Some(iq::dequantize_iq2_s), "2.56-bit lattice with sign bits"),
    row!(IQ4_XS, 256, 136, Some(iq_quant::quantize_iq4_xs), Some(iq::dequantize_iq4_xs), "4-bit non-linear grid, 6-bit scales per 32"),
    row!(I8, 1, 1, None, None, "8-bit integer"),
    row!(I16, 1, 2, None, None, "16-bit integer"),
    row!(I32, 1, 4, None, None, "32-bit integer"),
    row!(I64, 1, 8, None, None, "64-bit integer"),
    row!(F64, 1, 8, None, Some(float::dequantize_f64), "64-bit float"),
    row!(IQ1_M, 256, 56, None, Some(iq::dequantize_iq1_m), "1.75-bit ternary lattice (read and run)"),
    row!(BF16, 1, 2, Some(float::quantize_bf16), Some(float::dequantize_bf16), "bfloat16"),
    row!(TQ1_0, 256, 54, None, None, "ternary 1.69-bit (read only)"),
    row!(TQ2_0, 256, 66, None, None, "ternary 2-bit (read only)"),
    row!(MXFP4, 32, 17, None, None, "microscaling FP4 (read only)"),
    row!(NVFP4, 64, 36, None, None, "NVIDIA FP4 (read only)"),
    row!(Q1_0, 128, 18, None, None, "1-bit (read only)"),
    row!(Q4_0_S24, 64, 28, Some(sparse::quantize_q4_0_s24), Some(sparse::dequantize_q4_0_s24), "2:4 sparse, kept values 4-bit (smelt only)"),
    row!(Q8_0_S24, 64, 44, Some(sparse::quantize_q8_0_s24), Some(sparse::dequantize_q8_0_s24), "2:4 sparse, kept values 8-bit (smelt only)"),
];

impl GgmlType {
    /// Looks a type up by ggml's numeric id.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        REGISTRY.iter().find(|t| t.ty as u32 == id).map(|t| t.ty)
    }

    /// Looks a type up by name, ignoring case (`"q4_k"`, `"Q4_K"`, `"bf16"`).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        REGISTRY.iter().find(|t| t.name.eq_ignore_ascii_case(name)).map(|t| t.ty)
    }

    /// This type's registry row.
    pub fn info(self) -> &'static TypeInfo {
        // The registry holds every variant; the test `registry_is_complete` checks it.
        REGISTRY.iter().find(|t| t.ty == self).unwrap_or(&REGISTRY[0])
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn block_elems(self) -> usize {
        self.info().block_elems
    }

    pub fn block_bytes(self) -> usize {
        self.info().block_bytes
    }

    pub fn bits_per_weight(self) -> f64 {
        self.info().bits_per_weight()
    }

    /// Bytes taken by `n` elements, or `None` when `n` is not a whole number of blocks or the
    /// byte count overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let i = self.info();
        if !n.is_multiple_of(i.block_elems as u64) {
            return None;
        }
        (n / i.block_elems as u64).checked_mul(i.block_bytes as u64)
    }

    /// The type to use instead when a row of `cols` values is not a whole number of this type's
    /// blocks: llama.cpp's fallback chain (`tensor_type_fallback`: the lattice types IQ1_S ..
    /// IQ4_XS -> IQ4_NL, Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, anything
    /// else -> F16; smelt's 2:4 types -> Q4_0 / Q8_0), followed until a type
    /// fits. `None` when this type fits as it is. The one rule for every path that converts
    /// weights (`smelt quantize`, `--as` at load time).
    pub fn fallback_for_row(self, cols: u64) -> Option<GgmlType> {
        let mut ty = self;
        while !cols.is_multiple_of(ty.block_elems() as u64) {
            ty = match ty {
                t if iq::is_lattice(t) => GgmlType::IQ4_NL,
                GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
                GgmlType::Q4_K => GgmlType::Q5_0,
                GgmlType::Q5_K => GgmlType::Q5_1,
                GgmlType::Q6_K => GgmlType::Q8_0,
                // smelt's 2:4 types (64-weight blocks): their dense twins.
                GgmlType::Q4_0_S24 | GgmlType::Q8_0_S24 => ty.dense_twin(),
                _ => GgmlType::F16,
            };
        }
        (ty != self).then_some(ty)
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_MOSTLY_*`) for a file made mostly of this
    /// type; 1024 (`LLAMA_FTYPE_GUESSED`) for types without one.
    pub fn llama_file_type(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 7,
            GgmlType::Q5_0 => 8,
            GgmlType::Q5_1 => 9,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 14,
            GgmlType::Q5_K => 16,
            GgmlType::Q6_K => 18,
            GgmlType::IQ2_XXS => 19,
            GgmlType::IQ2_XS => 20,
            GgmlType::IQ3_XXS => 23,
            GgmlType::IQ1_S => 24,
            GgmlType::IQ4_NL => 25,
            GgmlType::IQ3_S => 26,
            GgmlType::IQ2_S => 28,
            GgmlType::IQ4_XS => 30,
            GgmlType::IQ1_M => 31,
            GgmlType::BF16 => 32,
            _ => 1024,
        }
    }

    /// A type only smelt reads (the 2:4 sparse ones): llama.cpp and the `gguf` package refuse
    /// files that hold it.
    pub fn is_smelt_only(self) -> bool {
        matches!(self, GgmlType::Q4_0_S24 | GgmlType::Q8_0_S24)
    }

    /// Whether this type stores 2:4 sparse weights (pruning rows that are not).
    pub fn is_sparse(self) -> bool {
        self.is_smelt_only()
    }

    /// The dense type a 2:4 sparse type stores its kept values as (Q4_0, Q8_0); itself for
    /// every other type.
    pub fn dense_twin(self) -> GgmlType {
        match self {
            GgmlType::Q4_0_S24 => GgmlType::Q4_0,
            GgmlType::Q8_0_S24 => GgmlType::Q8_0,
            t => t,
        }
    }

    /// A plain float type (F32, F16, BF16, F64): one value per element, no blocks.
    pub fn is_float(self) -> bool {
        matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::F64)
    }

    /// Whether [`quantize`] supports this type.
    pub fn can_quantize(self) -> bool {
        self.info().quantize.is_some()
    }

    /// Whether [`dequantize`] supports this type.
    pub fn can_dequantize(self) -> bool {
        self.info().dequantize.is_some()
    }

    /// Types smelt can produce with [`quantize`] and read back with [`dequantize`], excluding
    /// the activation-only formats Q8_1 and Q8_K.
    pub fn weight_targets() -> impl Iterator<Item = GgmlType> {
        REGISTRY
            .iter()
            .filter(|t| t.quantize.is_some() && t.dequantize.is_some())
            .filter(|t| !matches!(t.ty, GgmlType::Q8_1 | GgmlType::Q8_K))
            .map(|t| t.ty)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn check_geometry(ty: GgmlType, n: usize, bytes: usize) -> Result<(), QuantError> {
    let info = ty.info();
    if !n.is_multiple_of(info.block_elems) {
        return Err(QuantError::NotBlockMultiple { ty, n, block: info.block_elems });
    }
    let expected = n / info.block_elems * info.block_bytes;
    if bytes != expected {
        return Err(QuantError::WrongByteLength { ty, n, expected, got: bytes });
    }
    Ok(())
}

fn supported(op: fn(&TypeInfo) -> bool) -> String {
    REGISTRY.iter().filter(|t| op(t)).map(|t| t.name).collect::<Vec<_>>().join(", ")
}

/// Quantizes `src` into `dst` with the scalar reference (round-to-nearest) quantizer of `ty`.
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    let f = ty.info().quantize.ok_or_else(|| QuantError::Unsupported {
        ty,
        op: "quantizer",
        supported: supported(|t| t.quantize.is_some()),
    })?;
    check_geometry(ty, src.len(), dst.len())?;
    f(src, dst);
    Ok(())
}

/// Dequantizes `src` (whole blocks of `ty`) into `dst` with the scalar reference.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let f = ty.info().dequantize.ok_or_else(|| QuantError::Unsupported {
        ty,
        op: "dequantizer",
        supported: supported(|t| t.dequantize.is_some()),
    })?;
    check_geometry(ty, dst.len(), src.len())?;
    f(src, dst);
    Ok(())
}

/// [`quantize`] into a new buffer.
pub fn quantize_to_vec(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, QuantError> {
    let info = ty.info();
    if !src.len().is_multiple_of(info.block_elems) {
        return Err(QuantError::NotBlockMultiple { ty, n: src.len(), block: info.block_elems });
    }
    let mut out = vec![0u8; src.len() / info.block_elems * info.block_bytes];
    quantize(ty, src, &mut out)?;
    Ok(out)
}

/// [`dequantize`] into a new buffer; the element count follows from `src.len()`.
pub fn dequantize_to_vec(ty: GgmlType, src: &[u8]) -> Result<Vec<f32>, QuantError> {
    let info = ty.info();
    if !src.len().is_multiple_of(info.block_bytes) {
        let n = src.len() / info.block_bytes * info.block_elems;
        return Err(QuantError::WrongByteLength { ty, n, expected: n / info.block_elems * info.block_bytes, got: src.len() });
    }
    let mut out = vec![0f32; src.len() / info.block_bytes * info.block_elems];
    dequantize(ty, src, &mut out)?;
    Ok(out)
}

/// Iterates over `src` as blocks of `B`, copying each out (works at any alignment).
#[inline]
pub(crate) fn read_blocks<B: bytemuck::Pod>(src: &[u8]) -> impl Iterator<Item = B> + '_ {
    src.chunks_exact(std::mem::size_of::<B>()).map(bytemuck::pod_read_unaligned::<B>)
}

/// Writes `blocks` produced by `make` for each group of `n` floats of `src` into `dst`.
#[inline]
pub(crate) fn write_blocks<B: bytemuck::Pod>(src: &[f32], dst: &mut [u8], n: usize, mut make: impl FnMut(&[f32]) -> B) {
    for (x, out) in src.chunks_exact(n).zip(dst.chunks_exact_mut(std::mem::size_of::<B>())) {
        out.copy_from_slice(bytemuck::bytes_of(&make(x)));
    }
}

/// ggml's `nearest_int`: round half to even (valid for |x| < 2^22, which all callers ensure).
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_chain_ends_in_a_type_that_fits_the_row() {
        // SmolLM2's rows of 576 = 2 x 256 + 64: the K-quants do not fit, the 32-blocks do.
        assert_eq!(GgmlType::Q4_K.fallback_for_row(576), Some(GgmlType::Q5_0));
        assert_eq!(GgmlType::Q2_K.fallback_for_row(576), Some(GgmlType::Q4_0));
        assert_eq!(GgmlType::Q6_K.fallback_for_row(576), Some(GgmlType::Q8_0));
        assert_eq!(GgmlType::IQ3_S.fallback_for_row(576), Some(GgmlType::IQ4_NL));
        assert_eq!(GgmlType::IQ2_XXS.fallback_for_row(576), Some(GgmlType::IQ4_NL));
        assert_eq!(GgmlType::Q4_K.fallback_for_row(1536), None);
        assert_eq!(GgmlType::Q4_0.fallback_for_row(33), Some(GgmlType::F16));
        for ty in GgmlType::weight_targets() {
            for cols in [1u64, 31, 32, 48, 256, 576, 1000] {
                let t = ty.fallback_for_row(cols).unwrap_or(ty);
                assert!(cols.is_multiple_of(t.block_elems() as u64), "{ty} for rows of {cols} -> {t}");
            }
        }
    }

    #[test]
    fn registry_is_complete_and_ordered() {
        let ids: Vec<u32> = REGISTRY.iter().map(|t| t.ty as u32).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ids, sorted, "registry rows must be unique and in id order");
        for t in REGISTRY {
            assert_eq!(GgmlType::from_id(t.ty as u32), Some(t.ty));
            assert_eq!(GgmlType::from_name(&t.name.to_lowercase()), Some(t.ty));
            assert_eq!(format!("{:?}", t.ty), t.name);
        }
    }

    #[test]
    fn block_structs_match_registry() {
        use blocks::*;
        let pairs: [(GgmlType, usize, usize); 13] = [
            (GgmlType::Q4_0, QK, std::mem::size_of::<BlockQ4_0>()),
            (GgmlType::Q4_1, QK, std::mem::size_of::<BlockQ4_1>()),
            (GgmlType::Q5_0, QK, std::mem::size_of::<BlockQ5_0>()),
            (GgmlType::Q5_1, QK, std::mem::size_of::<BlockQ5_1>()),
            (GgmlType::Q8_0, QK, std::mem::size_of::<BlockQ8_0>()),
            (GgmlType::Q8_1, QK, std::mem::size_of::<BlockQ8_1>()),
            (GgmlType::IQ4_NL, QK, std::mem::size_of::<BlockIq4Nl>()),
            (GgmlType::Q2_K, QK_K, std::mem::size_of::<BlockQ2K>()),
            (GgmlType::Q3_K, QK_K, std::mem::size_of::<BlockQ3K>()),
            (GgmlType::Q4_K, QK_K, std::mem::size_of::<BlockQ4K>()),
            (GgmlType::Q5_K, QK_K, std::mem::size_of::<BlockQ5K>()),
            (GgmlType::Q6_K, QK_K, std::mem::size_of::<BlockQ6K>()),
            (GgmlType::Q8_K, QK_K, std::mem::size_of::<BlockQ8K>()),
        ];
        for (ty, elems, bytes) in pairs {
            assert_eq!((ty.block_elems(), ty.block_bytes()), (elems, bytes), "{ty}");
        }
    }

    #[test]
    fn geometry_errors_are_typed() {
        let mut out = [0u8; 18];
        assert_eq!(
            quantize(GgmlType::Q4_0, &[0.0; 31], &mut out),
            Err(QuantError::NotBlockMultiple { ty: GgmlType::Q4_0, n: 31, block: 32 })
        );
        assert_eq!(
            quantize(GgmlType::Q4_0, &[0.0; 32], &mut out[..17]),
            Err(QuantError::WrongByteLength { ty: GgmlType::Q4_0, n: 32, expected: 18, got: 17 })
        );
        assert!(matches!(dequantize(GgmlType::TQ1_0, &[0u8; 54], &mut [0.0; 256]), Err(QuantError::Unsupported { .. })));
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!([nearest_int(0.5), nearest_int(1.5), nearest_int(-0.5), nearest_int(-2.5), nearest_int(2.4999)], [0, 2, 0, -2, 2]);
    }
}
