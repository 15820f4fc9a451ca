//! Embedding quantization as sentence-transformers' `quantize_embeddings` does it, so that
//! vectors from smelt and from Python indexes interoperate:
//!
//! * `int8` / `uint8` (scalar): per dimension `j`, from calibration ranges `[lo_j, hi_j]`
//!   (minimum and maximum over calibration embeddings), `step_j = (hi_j - lo_j) / 255` (1 when
//!   zero), `q = clip(floor((x - lo_j) / step_j), 0, 255)`; `uint8` stores `q`, `int8` `q - 128`.
//!   All arithmetic in f32, as numpy does it on float32 arrays.
//! * `binary` / `ubinary`: one bit per dimension, `x > 0`, packed 8 per byte with the first
//!   dimension in the most significant bit (numpy `packbits`); `ubinary` stores the byte,
//!   `binary` the byte minus 128 as i8. Dimensions beyond a multiple of 8 are zero-padded.

/// Output precision of embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Float32,
    Int8,
    Uint8,
    Binary,
    Ubinary,
}

impl Precision {
    pub fn parse(s: &str) -> Option<Precision> {
        Some(match s.to_ascii_lowercase().as_str() {
            "float32" | "f32" => Precision::Float32,
            "int8" => Precision::Int8,
            "uint8" => Precision::Uint8,
            "binary" => Precision::Binary,
            "ubinary" => Precision::Ubinary,
            _ => return None,
        })
    }

    /// Values per embedding of `dim` dimensions.
    pub fn width(self, dim: usize) -> usize {
        match self {
            Precision::Binary | Precision::Ubinary => dim.div_ceil(8),
            _ => dim,
        }
    }

    pub fn needs_ranges(self) -> bool {
        matches!(self, Precision::Int8 | Precision::Uint8)
    }
}

/// Per-dimension `[min; dim]` and `[max; dim]` over `rows` (each `dim` long).
pub fn ranges<'a>(rows: impl IntoIterator<Item = &'a [f32]>, dim: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut lo, mut hi) = (vec![f32::INFINITY; dim], vec![f32::NEG_INFINITY; dim]);
    for r in rows {
        for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(r) {
            *l = l.min(x);
            *h = h.max(x);
        }
    }
    (lo, hi)
}

/// Quantizes one embedding into `out` (`precision.width(x.len())` values, each the byte of an
/// i8 or u8 as the precision says). `lo`/`hi` are needed for int8/uint8 only.
pub fn quantize(x: &[f32], precision: Precision, lo: &[f32], hi: &[f32], out: &mut [u8]) {
    match precision {
        Precision::Float32 => {}
        Precision::Int8 | Precision::Uint8 => {
            let shift = if precision == Precision::Int8 { 128.0 } else { 0.0 };
            for (j, o) in out.iter_mut().enumerate().take(x.len()) {
                let step = (hi[j] - lo[j]) / 255.0;
                let step = if step == 0.0 { 1.0 } else { step };
                let q = ((x[j] - lo[j]) / step).floor().clamp(0.0, 255.0);
                // NaN inputs clamp to NaN; `as` maps NaN to 0, as numpy's cast does on x86.
                *o = ((q - shift) as i32) as u8;
            }
        }
        Precision::Binary | Precision::Ubinary => {
            for (b, o) in out.iter_mut().enumerate() {
                let mut byte = 0u8;
                for k in 0..8 {
                    if x.get(b * 8 + k).is_some_and(|&v| v > 0.0) {
                        byte |= 0x80 >> k;
                    }
                }
                *o = if precision == Precision::Binary { byte.wrapping_sub(128) } else { byte };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_and_binary_follow_the_documented_formulas() {
        let x = [-1.0f32, 0.0, 0.5, 1.0, 2.0, 0.25, -0.5, 3.0, 0.1];
        let (lo, hi) = (vec![-1.0; 9], vec![1.0; 9]);
        let mut u = [0u8; 9];
        quantize(&x, Precision::Uint8, &lo, &hi, &mut u);
        // Expected values printed by sentence-transformers' quantize_embeddings on the same input
        // and ranges. Note 1.0 -> 254, not 255: in f32, 2 / (2/255) = 254.99998.
        assert_eq!(u, [0, 127, 191, 254, 255, 159, 63, 255, 140]);
        let mut i = [0u8; 9];
        quantize(&x, Precision::Int8, &lo, &hi, &mut i);
        assert_eq!(i.map(|b| b as i8), [-128, -1, 63, 126, 127, 31, -65, 127, 12]);
        let mut b = [0u8; 2];
        quantize(&x, Precision::Ubinary, &lo, &hi, &mut b);
        assert_eq!(b, [0b0011_1101, 0b1000_0000]);
        quantize(&x, Precision::Binary, &lo, &hi, &mut b);
        assert_eq!(b.map(|v| v as i8), [-67, 0]);
    }
}
