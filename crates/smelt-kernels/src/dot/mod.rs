//! Dot-product kernels between one row of weights (any registry type) and one row of
//! activations, and the table that picks them per CPU.
//!
//! Quantized weights multiply quantized activations: the activation row is quantized once per
//! matrix product to the weight type's [`ActFormat`] (Q8Sum for the 32-element types, Q8_K for
//! K-quants) so that the inner loops are integer multiply-adds; float weights multiply f32
//! activations.
//!
//! One table row per weight type holds the scalar reference twin and the SIMD kernel of every
//! ISA (`None` where that ISA has none: the scalar twin runs instead).

pub mod scalar;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "aarch64")]
pub mod neon;

use smelt_formats::GgmlType;

pub use crate::act::ActFormat;
use crate::cpu::{self, Isa};

/// `n` weights (whole blocks of the row's type, in `w`) dotted with `n` activations (in `x`, in
/// the row's activation format).
///
/// # Safety
/// `w` and `x` hold at least the bytes of `n` elements of their types, `n` is a multiple of the
/// weight block size, and the kernel's ISA is available on this CPU.
pub type VecDotFn = unsafe fn(n: usize, w: &[u8], x: &[u8]) -> f32;

/// Many rows against one activation row: `out[r] = dot(n, w[r * stride..], x)`. Where an ISA
/// has one, it shares the activation loads between rows and pays the per-row costs once per
/// pair; elsewhere a loop over the row's [`VecDotFn`] runs.
///
/// # Safety
/// As [`VecDotFn`], for every row: `w` holds `(out.len() - 1) * stride` bytes plus one row.
pub type RowsFn = unsafe fn(n: usize, w: &[u8], stride: usize, x: &[u8], out: &mut [f32]);

/// Many weight rows against up to [`TILE_X`] activation rows at once:
/// `outs[j][r] = dot(n, w[r * stride..], xs[j])` (the rows of several sequences decoded
/// together). Where an ISA has one, each weight block is unpacked once for all activation rows;
/// elsewhere [`RowsFn`] runs once per activation row.
///
/// # Safety
/// As [`RowsFn`] for every activation row; `1 <= xs.len() == outs.len() <= TILE_X`, every
/// `outs[j]` of the same length.
pub type TileFn = unsafe fn(n: usize, w: &[u8], stride: usize, xs: &[&[u8]], outs: &mut [&mut [f32]]);

/// Most activation rows one [`TileFn`] call takes (the AVX2 and AVX-512 tiles run them all in
/// one pass).
pub const TILE_X: usize = 8;

/// One row of the kernel table.
pub struct KernelRow {
    pub weight: GgmlType,
    pub act: ActFormat,
    pub scalar: VecDotFn,
    pub avx2: Option<VecDotFn>,
    pub neon: Option<VecDotFn>,
    /// The AVX2 multi-row kernel, where there is one. Measured with `benches/gemv_bandwidth.rs`:
    /// row pairs pay off for 4- and 5-bit weights (shared activation work, half the per-row
    /// cost); Q8_0 and Q8_1 stream faster one row at a time, so they have none.
    pub avx2_rows: Option<RowsFn>,
    /// The AVX2 kernel for several activation rows, where there is one (the 32-element types).
    pub avx2_tile: Option<TileFn>,
    /// The same with AVX-512 (F, BW, VL, VNNI), used in its place on the AVX2 level where the CPU
    /// has those ([`cpu::avx512`]); the unsigned 32-element types.
    pub avx512_tile: Option<TileFn>,
    /// The multi-row kernel that goes with `avx512_tile`: it forms each row's sum exactly as the
    /// tile does. A row kernel with another summation order would make a sequence decoded alone
    /// and one decoded beside others differ: SmolLM2 turns a 1e-6 relative difference in its
    /// matrix products into half a logit after 30 layers (the activations' quantization rounds
    /// the other way here and there).
    pub avx512_rows: Option<RowsFn>,
}

macro_rules! avx2 {
    ($f:ident) => {{
        #[cfg(target_arch = "x86_64")]
        let f: Option<VecDotFn> = Some(avx2::$f);
        #[cfg(not(target_arch = "x86_64"))]
        let f: Option<VecDotFn> = None;
        f
    }};
}

macro_rules! neon {
    ($f:ident) => {{
        #[cfg(target_arch = "aarch64")]
        let f: Option<VecDotFn> = Some(neon::$f);
        #[cfg(not(target_arch = "aarch64"))]
        let f: Option<VecDotFn> = None;
        f
    }};
}

macro_rules! avx2_rows {
    ($f:ident) => {{
        #[cfg(target_arch = "x86_64")]
        let f: Option<RowsFn> = Some(avx2::$f);
        #[cfg(not(target_arch = "x86_64"))]
        let f: Option<RowsFn> = None;
        f
    }};
}

macro_rules! avx2_tile {
    ($f:ident) => {{
        #[cfg(target_arch = "x86_64")]
        let f: Option<TileFn> = Some(avx2::$f);
        #[cfg(not(target_arch = "x86_64"))]
        let f: Option<TileFn> = None;
        f
    }};
}

macro_rules! avx512_tile {
    ($f:ident) => {{
        #[cfg(target_arch = "x86_64")]
        let f: Option<TileFn> = Some(avx512::$f);
        #[cfg(not(target_arch = "x86_64"))]
        let f: Option<TileFn> = None;
        f
    }};
}

macro_rules! avx512_rows {
    ($f:ident) => {{
        #[cfg(target_arch = "x86_64")]
        let f: Option<RowsFn> = Some(avx512::$f);
        #[cfg(not(target_arch = "x86_64"))]
        let f: Option<RowsFn> = None;
        f
    }};
}

macro_rules! row {
    ($w:ident, $a:ident, $f:ident) => {
        KernelRow { weight: GgmlType::$w, act: ActFormat::$a, scalar: scalar::$f, avx2: avx2!($f), neon: neon!($f), avx2_rows: None, avx2_tile: None, avx512_tile: None, avx512_rows: None }
    };
    ($w:ident, $a:ident, $f:ident, tile $tile:ident) => {
        KernelRow { weight: GgmlType::$w, act: ActFormat::$a, scalar: scalar::$f, avx2: avx2!($f), neon: neon!($f), avx2_rows: None, avx2_tile: avx2_tile!($tile), avx512_tile: None, avx512_rows: None }
    };
    ($w:ident, $a:ident, $f:ident, $rows:ident, $tile:ident) => {
        KernelRow { weight: GgmlType::$w, act: ActFormat::$a, scalar: scalar::$f, avx2: avx2!($f), neon: neon!($f), avx2_rows: avx2_rows!($rows), avx2_tile: avx2_tile!($tile), avx512_tile: None, avx512_rows: None }
    };
    ($w:ident, $a:ident, $f:ident, $rows:ident, $tile:ident, wide) => {
        KernelRow { weight: GgmlType::$w, act: ActFormat::$a, scalar: scalar::$f, avx2: avx2!($f), neon: neon!($f), avx2_rows: avx2_rows!($rows), avx2_tile: avx2_tile!($tile), avx512_tile: avx512_tile!($tile), avx512_rows: avx512_rows!($rows) }
    };
}

/// The kernel table (see the module docs).
pub fn table() -> &'static [KernelRow] {
    static TABLE: std::sync::OnceLock<Vec<KernelRow>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        vec![
            row!(F32, F32, dot_f32),
            row!(F16, F32, dot_f16),
            row!(BF16, F32, dot_bf16),
            row!(Q4_0, Q8Sum, dot_q4_0, rows_q4_0, tile_q4_0, wide),
            row!(Q4_1, Q8Sum, dot_q4_1, rows_q4_1, tile_q4_1, wide),
            row!(Q5_0, Q8Sum, dot_q5_0, rows_q5_0, tile_q5_0, wide),
            row!(Q5_1, Q8Sum, dot_q5_1, rows_q5_1, tile_q5_1, wide),
            row!(Q8_0, Q8Sum, dot_q8_0, tile tile_q8_0),
            row!(Q8_1, Q8Sum, dot_q8_1),
            row!(IQ4_NL, Q8Sum, dot_iq4_nl, rows_iq4_nl, tile_iq4_nl),
            row!(Q2_K, Q8K, dot_q2_k_q8_k),
            row!(Q3_K, Q8K, dot_q3_k_q8_k),
            row!(Q4_K, Q8K, dot_q4_k_q8_k),
            row!(Q5_K, Q8K, dot_q5_k_q8_k),
            row!(Q6_K, Q8K, dot_q6_k_q8_k),
            row!(Q8_K, Q8K, dot_q8_k_q8_k),
            // ggml's lattice types (one generic kernel behind eight names, see `scalar::dot_lattice_q8_k`).
            row!(IQ4_XS, Q8K, dot_iq4_xs_q8_k),
            row!(IQ3_S, Q8K, dot_iq3_s_q8_k),
            row!(IQ3_XXS, Q8K, dot_iq3_xxs_q8_k),
            row!(IQ2_S, Q8K, dot_iq2_s_q8_k),
            row!(IQ2_XS, Q8K, dot_iq2_xs_q8_k),
            row!(IQ2_XXS, Q8K, dot_iq2_xxs_q8_k),
            row!(IQ1_M, Q8K, dot_iq1_m_q8_k),
            row!(IQ1_S, Q8K, dot_iq1_s_q8_k),
            // smelt's 2:4 sparse types.
            KernelRow { weight: GgmlType::Q4_0_S24, act: ActFormat::Q8Sum, scalar: scalar::dot_q4_0_s24, avx2: avx2!(dot_q4_0_s24), neon: neon!(dot_q4_0_s24), avx2_rows: avx2_rows!(rows_q4_0_s24), avx2_tile: None, avx512_tile: None, avx512_rows: None },
            KernelRow { weight: GgmlType::Q8_0_S24, act: ActFormat::Q8Sum, scalar: scalar::dot_q8_0_s24, avx2: avx2!(dot_q8_0_s24), neon: neon!(dot_q8_0_s24), avx2_rows: avx2_rows!(rows_q8_0_s24), avx2_tile: None, avx512_tile: None, avx512_rows: None },
        ]
    })
}

/// A selected kernel.
#[derive(Clone, Copy)]
pub struct DotKernel {
    pub weight: GgmlType,
    pub act: ActFormat,
    pub isa: Isa,
    f: VecDotFn,
    rows: Option<RowsFn>,
    tile: Option<TileFn>,
}

impl DotKernel {
    /// Runs the kernel after checking the lengths (the ISA was checked when it was selected).
    pub fn dot(&self, n: usize, w: &[u8], x: &[u8]) -> Result<f32, crate::KernelError> {
        crate::check_len(self.weight, n, w.len())?;
        let need = self.act.row_bytes(n)?;
        if x.len() < need {
            return Err(crate::KernelError::Shape(format!("{n} {} activations need {need} bytes, got {}", self.act, x.len())));
        }
        // SAFETY: lengths checked above; `kernel` only returns ISAs this CPU has.
        Ok(unsafe { (self.f)(n, w, x) })
    }

    /// `out[r] = dot(n, w[r * stride..], x)` for every row (see [`RowsFn`]), lengths checked.
    pub fn rows(&self, n: usize, w: &[u8], stride: usize, x: &[u8], out: &mut [f32]) -> Result<(), crate::KernelError> {
        let row = self.weight.block_bytes() * (n / self.weight.block_elems().max(1));
        if !out.is_empty() {
            let before_last = (out.len() - 1)
                .checked_mul(stride)
                .ok_or_else(|| crate::KernelError::Shape(format!("{} rows of stride {stride} overflow", out.len())))?;
            crate::check_len(self.weight, n, w.len().saturating_sub(before_last))?;
            if stride < row && out.len() > 1 {
                return Err(crate::KernelError::Shape(format!("row stride {stride} is shorter than a row of {row} bytes")));
            }
        }
        let need = self.act.row_bytes(n)?;
        if x.len() < need {
            return Err(crate::KernelError::Shape(format!("{n} {} activations need {need} bytes, got {}", self.act, x.len())));
        }
        // SAFETY: lengths checked above; the ISA was detected when the kernel was selected.
        unsafe { self.call_rows(n, w, stride, x, out) };
        Ok(())
    }

    /// [`DotKernel::rows`] without the checks.
    ///
    /// # Safety
    /// See [`RowsFn`].
    #[inline]
    pub unsafe fn call_rows(&self, n: usize, w: &[u8], stride: usize, x: &[u8], out: &mut [f32]) {
        match self.rows {
            Some(rows) => rows(n, w, stride, x, out),
            None => {
                for (r, o) in out.iter_mut().enumerate() {
                    *o = (self.f)(n, w.get_unchecked(r * stride..), x);
                }
            }
        }
    }

    /// [`TileFn`]'s product, lengths checked: `outs[j][r] = dot(n, w[r * stride..], xs[j])`
    /// for up to [`TILE_X`] activation rows.
    pub fn tile(&self, n: usize, w: &[u8], stride: usize, xs: &[&[u8]], outs: &mut [&mut [f32]]) -> Result<(), crate::KernelError> {
        if xs.is_empty() || xs.len() > TILE_X || xs.len() != outs.len() || outs.iter().any(|o| o.len() != outs[0].len()) {
            return Err(crate::KernelError::Shape(format!("a tile takes 1 to {TILE_X} activation rows with an output row each, all of one length; got {} and {}", xs.len(), outs.len())));
        }
        let mut probe = vec![0.0f32; outs[0].len()];
        for x in xs {
            // The same checks as `rows` (lengths of w, stride, the activation row).
            self.rows(n, w, stride, x, &mut probe)?;
        }
        // SAFETY: every length checked above; the ISA was detected when the kernel was selected.
        unsafe { self.call_tile(n, w, stride, xs, outs) };
        Ok(())
    }

    /// [`DotKernel::tile`] without the checks.
    ///
    /// # Safety
    /// See [`TileFn`].
    #[inline]
    pub unsafe fn call_tile(&self, n: usize, w: &[u8], stride: usize, xs: &[&[u8]], outs: &mut [&mut [f32]]) {
        match self.tile {
            Some(tile) => tile(n, w, stride, xs, outs),
            None => {
                for (x, out) in xs.iter().zip(outs.iter_mut()) {
                    self.call_rows(n, w, stride, x, out);
                }
            }
        }
    }

    /// Whether this kernel has a dedicated form for several activation rows.
    pub fn has_tile(&self) -> bool {
        self.tile.is_some()
    }

    /// Whether this kernel has a dedicated multi-row form.
    pub fn has_rows(&self) -> bool {
        self.rows.is_some()
    }

    /// The raw function, for loops that check lengths once for many rows.
    ///
    /// # Safety
    /// See [`VecDotFn`].
    #[inline]
    pub unsafe fn call(&self, n: usize, w: &[u8], x: &[u8]) -> f32 {
        (self.f)(n, w, x)
    }
}

/// The activation format the kernels of `weight` expect, if smelt has kernels for it.
pub fn activation_type(weight: GgmlType) -> Option<ActFormat> {
    table().iter().find(|r| r.weight == weight).map(|r| r.act)
}

/// The kernel of `weight` for exactly `isa` (`None` if that ISA is not available here or has no
/// kernel for this type), with the AVX-512 tile where the CPU has it ([`cpu::avx512`]).
pub fn kernel(isa: Isa, weight: GgmlType) -> Option<DotKernel> {
    kernel_at(isa, weight, cpu::avx512())
}

/// [`kernel`], with the AVX-512 tile only if `wide` (and the CPU has it): the conformance tests
/// check both tile forms on a machine that has both.
pub fn kernel_at(isa: Isa, weight: GgmlType, wide: bool) -> Option<DotKernel> {
    if !cpu::available().contains(&isa) {
        return None;
    }
    let r = table().iter().find(|r| r.weight == weight)?;
    let f = match isa {
        Isa::Scalar => Some(r.scalar),
        Isa::Avx2 => r.avx2,
        Isa::Neon => r.neon,
    }?;
    let (rows, tile) = match isa {
        Isa::Avx2 => match (wide && cpu::has_avx512(), r.avx512_rows, r.avx512_tile) {
            (true, Some(rows), Some(tile)) => (Some(rows), Some(tile)),
            _ => (r.avx2_rows, r.avx2_tile),
        },
        _ => (None, None),
    };
    Some(DotKernel { weight, act: r.act, isa, f, rows, tile })
}

/// The fastest kernel for `weight` on this machine (the scalar twin where no SIMD one exists).
pub fn best(weight: GgmlType) -> Option<DotKernel> {
    kernel(cpu::best(), weight).or_else(|| kernel(Isa::Scalar, weight))
}

/// The additive constant `c` of a 32-element weight block (`w_i = a q_i + c`) that multiplies
/// the activation block's stored sum `s` in the Q8Sum kernels.
fn block_offset(weight: GgmlType, b: &[u8]) -> f64 {
    let f16_at = |o: usize| half::f16::from_le_bytes([b[o], b[o + 1]]).to_f64();
    match weight {
        GgmlType::Q4_0 => -8.0 * f16_at(0),
        GgmlType::Q5_0 => -16.0 * f16_at(0),
        GgmlType::Q4_1 | GgmlType::Q5_1 => f16_at(2),
        _ => 0.0,
    }
}

/// What every kernel of `weight` computes, in f64: `sum_i w_i x_i` over the reference
/// dequantizations of `w` and of the activations `x` (in the row's activation format), and the
/// error scale `sum_i |w_i x_i|`. With Q8Sum activations the offset `c` of each weight block
/// multiplies the stored block sum `s` (see [`crate::act`]), not the exact `d sum(q)`, so the
/// difference `c (s - d sum q)` is added and `|c s|` joins the error scale. The oracle of the
/// conformance tests; `None` for types without a kernel or lengths that do not match.
pub fn exact_f64(weight: GgmlType, w: &[u8], x: &[u8]) -> Option<(f64, f64)> {
    let act = activation_type(weight)?;
    let wf = smelt_formats::quant::dequantize_to_vec(weight, w).ok()?;
    let xf = act.dequantize_row(x).ok()?;
    if wf.len() != xf.len() {
        return None;
    }
    let (mut abs, mut sum) = (0.0f64, 0.0f64);
    for (p, q) in wf.iter().zip(&xf) {
        let t = *p as f64 * *q as f64;
        sum += t;
        abs += t.abs();
    }
    if act == ActFormat::Q8Sum && weight.block_elems() == 32 {
        for ((wb, xb), xs) in w.chunks_exact(weight.block_bytes()).zip(x.chunks_exact(40)).zip(xf.chunks_exact(32)) {
            let c = block_offset(weight, wb);
            let s = f32::from_le_bytes([xb[4], xb[5], xb[6], xb[7]]) as f64;
            let exact: f64 = xs.iter().map(|&v| v as f64).sum();
            sum += c * (s - exact);
            abs += (c * s).abs();
        }
    }
    Some((abs, sum))
}
