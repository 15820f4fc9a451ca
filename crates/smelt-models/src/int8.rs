//! The int8 path of the encoders: weight matrices quantized per output channel at load time,
//! activations quantized per row at run time ([`smelt_kernels::qgemm`]), chosen per layer and
//! per matrix by an [`Int8Spec`].

use smelt_kernels::pool::ThreadPool;
use smelt_kernels::qgemm::{gemm_i8, I8Matrix};

use crate::linear::Linear;
use crate::ModelError;

/// A layer's weight matrix: in its stored type, or int8 per channel.
#[derive(Debug)]
pub enum DenseWeight {
    Typed(Linear),
    Int8(I8Matrix),
}

impl DenseWeight {
    pub fn rows(&self) -> usize {
        match self {
            DenseWeight::Typed(l) => l.rows,
            DenseWeight::Int8(q) => q.rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            DenseWeight::Typed(l) => l.cols,
            DenseWeight::Int8(q) => q.cols,
        }
    }

    /// Bytes the weights occupy in memory (int8 data plus scales for int8).
    pub fn bytes(&self) -> usize {
        match self {
            DenseWeight::Typed(l) => l.bytes().len(),
            DenseWeight::Int8(q) => q.bytes(),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            DenseWeight::Typed(l) => l.ty.name(),
            DenseWeight::Int8(_) => "I8 (per channel)",
        }
    }

    /// `Y = X W^T` for `m` rows.
    pub fn apply(&self, pool: &ThreadPool, x: &[f32], m: usize, y: &mut [f32], scratch: &mut Vec<u8>) -> Result<(), ModelError> {
        match self {
            DenseWeight::Typed(l) => l.apply(pool, x, m, y, scratch),
            DenseWeight::Int8(q) => Ok(gemm_i8(pool, q, x, m, y)?),
        }
    }

    /// Quantizes a typed matrix to int8 (no-op when already int8), smoothed with the input's
    /// per-channel maxima when calibration gave them.
    pub fn to_int8(&mut self, act_amax: Option<&[f32]>) -> Result<(), ModelError> {
        if let DenseWeight::Typed(l) = self {
            let mut f = vec![0f32; l.rows * l.cols];
            smelt_formats::quant::dequantize(l.ty, l.bytes(), &mut f)?;
            *self = DenseWeight::Int8(quantize_weights(&f, l.rows, l.cols, act_amax)?);
        }
        Ok(())
    }
}

/// The int8 path's quantization of one weight matrix `w` (`rows x cols`, row-major): per output
/// channel, smoothed with [`SMOOTH_ALPHA`] when the calibration maxima of its input are given.
/// The one rule for inference ([`DenseWeight::to_int8`]) and quantization-aware training.
pub fn quantize_weights(w: &[f32], rows: usize, cols: usize, act_amax: Option<&[f32]>) -> Result<I8Matrix, ModelError> {
    Ok(match act_amax {
        Some(a) => I8Matrix::quantize_smoothed(w, rows, cols, a, SMOOTH_ALPHA)?,
        None => I8Matrix::quantize(w, rows, cols)?,
    })
}

/// The matrix the int8 product multiplies by, in the scale of the original weights:
/// `W_e[j, c] = (s_j q[j, c]) * smooth_c` (`smooth_c = 1 / f_c`, 1 without smoothing), so that
/// `x W_e^T` with `x` the input before smoothing is the int8 product up to f32 rounding.
/// Returns `rows x cols` values.
pub fn fake_weights(q: &I8Matrix) -> Vec<f32> {
    let mut out = Vec::with_capacity(q.rows * q.cols);
    for r in 0..q.rows {
        let row = q.dequantize_row(r);
        match &q.smooth {
            Some(s) => out.extend(row.iter().zip(s).map(|(v, s)| v * s)),
            None => out.extend_from_slice(&row),
        }
    }
    out
}

/// The int8 path's run-time activation quantizer as a round trip, on rows of `cols` values
/// (`x` and `out` alike): each row is multiplied by `smooth` (when given), quantized to unsigned
/// 8 bits with its own scale `t` and zero point `z` exactly as [`smelt_kernels::qgemm`] does,
/// and mapped back to the input's scale: `out_c = ((a_c - z) t) / smooth_c`.
pub fn fake_quantize_rows(x: &[f32], cols: usize, smooth: Option<&[f32]>, out: &mut [f32]) {
    let mut codes = vec![0u8; cols.div_ceil(smelt_kernels::qgemm::STEP) * smelt_kernels::qgemm::STEP];
    for (row, o) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        let (t, z) = smelt_kernels::qgemm::quantize_row(row, smooth, &mut codes);
        for (c, (o, &a)) in o.iter_mut().zip(&codes).enumerate() {
            let v = (a as i32 - z) as f32 * t;
            *o = smooth.map_or(v, |s| v / s[c]);
        }
    }
}

/// SmoothQuant's migration strength: 0.45 kept all-MiniLM-L6-v2 closest to fp32 among 0.4, 0.45,
/// 0.5, 0.55, 0.6 and 0.65 (minimum cosine to ONNX Runtime fp32 over the 3,000 STS-B dev
/// sentences: 0.9937, 0.9939, 0.9935, 0.9938, 0.9908, 0.9902; 7-bit weights need less of the
/// activations' range moved into them than 8-bit ones did).
pub const SMOOTH_ALPHA: f32 = 0.45;

/// Per-channel maxima of the inputs of each layer's matrices (`[layer][kind][channel]`),
/// gathered by running the model in its stored precision on calibration text.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    pub amax: Vec<[Vec<f32>; 4]>,
}

impl crate::observe::Observer for Calibration {
    fn observe(&mut self, layer: usize, input: crate::observe::MatrixInput, x: &[f32], _rows: usize, cols: usize) {
        self.record(layer, input.index(), x, cols);
    }
}

impl Calibration {
    /// Folds rows of `cols` values into the maxima of (`layer`, `kind`).
    pub fn record(&mut self, layer: usize, kind: usize, x: &[f32], cols: usize) {
        if self.amax.len() <= layer {
            self.amax.resize_with(layer + 1, Default::default);
        }
        let m = &mut self.amax[layer][kind];
        m.resize(cols, 0.0);
        for row in x.chunks_exact(cols) {
            for (a, v) in m.iter_mut().zip(row) {
                *a = a.max(v.abs());
            }
        }
    }

    pub fn get(&self, layer: usize, kind: usize) -> Option<&[f32]> {
        self.amax.get(layer).map(|k| k[kind].as_slice()).filter(|m| !m.is_empty())
    }
}

/// Sentences of everyday English to calibrate on when the user gives none: short and long,
/// questions, numbers, names, a single word and an empty text.
pub const DEFAULT_CALIBRATION: &[&str] = &[
    "",
    "Yes",
    "The cat sat on the mat.",
    "How do I reset my password if I no longer have access to my email account?",
    "A man is playing a guitar on a street corner while people walk past.",
    "Quarterly revenue rose 12% to $4.3 billion, beating analysts' forecasts.",
    "She walked to the window, looked out at the rain, and decided to stay home after all.",
    "Python, Rust and C++ are programming languages used for systems and data work.",
    "The committee will meet on Tuesday, 14 March, at 10:30 in room 204.",
    "Two dogs are running through a field of tall grass.",
    "Is it safe to take ibuprofen together with paracetamol for a headache?",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "The new train line connects the airport with the city centre in under twenty minutes, \
     and tickets can be bought on board or through the app.",
    "Error: connection refused (port 5432). Is the database server running?",
    "Paris",
    "The weather forecast predicts heavy snow in the mountains and strong winds along the coast \
     for the rest of the week, so travellers are advised to check road conditions before leaving.",
];

/// The matrices of a transformer layer the int8 path can take.
pub const KINDS: [&str; 4] = ["qkv", "o", "up", "down"];

/// Which matrices run in int8: a comma-separated list of items, applied in order, each `KIND`,
/// `LAYER`, `LAYER.KIND` or `all`, optionally prefixed by `-` to exclude (KIND is one of
/// `qkv`, `o`, `up`, `down`; LAYER a 0-based index or a range `A-B`).
///
/// Examples: `all`; `all,-down` (every matrix but the FFN output projections);
/// `all,-5` (all but the last layer of a 6-layer model); `qkv,o` (attention only).
/// (include, layer range, kind index) of one item of an [`Int8Spec`].
type SpecItem = (bool, Option<(usize, usize)>, Option<usize>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Int8Spec {
    items: Vec<SpecItem>,
}

impl Int8Spec {
    pub fn all() -> Int8Spec {
        Int8Spec { items: vec![(true, None, None)] }
    }

    pub fn parse(s: &str) -> Result<Int8Spec, String> {
        let mut items = Vec::new();
        for raw in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (include, item) = match raw.strip_prefix('-') {
                Some(rest) => (false, rest),
                None => (true, raw),
            };
            let kind = |k: &str| KINDS.iter().position(|&x| x == k);
            let layers = |l: &str| -> Option<(usize, usize)> {
                match l.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => l.parse().ok().map(|v| (v, v)),
                }
            };
            let bad = || format!("bad int8 item {raw:?}: expected all, a kind ({}), a layer (N or A-B) or LAYER.KIND", KINDS.join(", "));
            let parsed = if item == "all" {
                (include, None, None)
            } else if let Some(k) = kind(item) {
                (include, None, Some(k))
            } else if let Some((l, k)) = item.split_once('.') {
                (include, Some(layers(l).ok_or_else(bad)?), Some(kind(k).ok_or_else(bad)?))
            } else {
                (include, Some(layers(item).ok_or_else(bad)?), None)
            };
            items.push(parsed);
        }
        if items.is_empty() {
            return Err("empty int8 selection (try `all`)".into());
        }
        Ok(Int8Spec { items })
    }

    /// Whether matrix `kind` (an index into [`KINDS`]) of layer `layer` runs in int8.
    pub fn selects(&self, layer: usize, kind: usize) -> bool {
        let mut on = false;
        for &(include, layers, k) in &self.items {
            let layer_ok = layers.is_none_or(|(a, b)| (a..=b).contains(&layer));
            if layer_ok && k.is_none_or(|k| k == kind) {
                on = include;
            }
        }
        on
    }
}

impl std::str::FromStr for Int8Spec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Int8Spec::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_select_in_order() {
        let s = Int8Spec::parse("all,-down,3.down,-5").unwrap();
        assert!(s.selects(0, 0) && !s.selects(0, 3) && s.selects(3, 3) && !s.selects(5, 0) && s.selects(4, 2));
        let s = Int8Spec::parse("qkv,1-2.up").unwrap();
        assert!(s.selects(4, 0) && !s.selects(4, 1) && s.selects(2, 2) && !s.selects(3, 2));
        for bad in ["", "x", "1.z", "a-b", "-"] {
            assert!(Int8Spec::parse(bad).is_err(), "{bad:?}");
        }
    }
}
