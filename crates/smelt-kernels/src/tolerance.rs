//! Named error budgets for comparing a kernel with its reference twin.
//!
//! SIMD twins compute the same integer sums as the scalar references and differ only in the
//! order of float additions, so their results agree to a few units in the last place relative
//! to the magnitude of the summed terms. The budget is therefore relative to `sum |w_i x_i|`
//! (the scale of the rounding errors), not to the result, which can cancel to near zero.

/// A tolerance: `|a - b| <= abs + rel * scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub name: &'static str,
    pub abs: f32,
    pub rel: f32,
}

impl Tolerance {
    pub fn check(&self, got: f32, want: f32, scale: f32) -> Result<(), String> {
        let err = (got - want).abs();
        let bound = self.abs + self.rel * scale.abs();
        if err <= bound && got.is_finite() == want.is_finite() {
            Ok(())
        } else {
            Err(format!("{}: got {got}, want {want}, |error| {err} > {bound} (scale {scale})", self.name))
        }
    }
}

/// SIMD dot product vs scalar twin, integer inner sums (quantized types): float reassociation
/// of a few hundred block terms.
pub const DOT_QUANTIZED: Tolerance = Tolerance { name: "dot/quantized", abs: 1e-6, rel: 2e-6 };

/// SIMD dot product vs scalar twin on float weights (F32/F16/BF16): reassociation of up to a
/// few thousand products.
pub const DOT_FLOAT: Tolerance = Tolerance { name: "dot/float", abs: 1e-6, rel: 4e-6 };

/// Matrix products vs a plain f64 loop over dequantized weights and (quantized) activations.
pub const MATMUL: Tolerance = Tolerance { name: "matmul", abs: 1e-5, rel: 1e-5 };
