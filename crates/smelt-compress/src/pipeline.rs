//! A whole GGUF file re-quantized: planned, converted tensor by tensor, streamed into a new GGUF
//! written atomically (temporary file, renamed when complete), with error statistics per type.

use std::collections::BTreeMap;
use std::path::Path;

use smelt_formats::fsutil::write_atomic;
use smelt_formats::gguf::{GgufValue, GgufWriter, TensorSpec};
use smelt_formats::{GgmlType, GgufError, GgufFile};
use smelt_kernels::pool::ThreadPool;

use crate::awq::{Factors, Scaling};
use crate::gptq::{gptq, GptqInput, GptqOptions};
use crate::imatrix::Imatrix;
use crate::{convert, round_trip, CompressError, Converted, TensorPlan};

/// Squared error and energy of the written weights of one type, with their count and size.
#[derive(Default, Clone, Copy, Debug)]
pub struct ErrStat {
    pub err2: f64,
    pub x2: f64,
    pub params: u64,
    pub bytes: u64,
    pub tensors: u64,
}

impl ErrStat {
    /// Relative RMS error of the written weights against the input (0 when nothing changed).
    pub fn relative_rms(&self) -> f64 {
        if self.x2 > 0.0 {
            (self.err2 / self.x2).sqrt()
        } else {
            0.0
        }
    }
}

/// What was written.
#[derive(Debug)]
pub struct Summary {
    /// Per written type.
    pub types: BTreeMap<GgmlType, ErrStat>,
    /// Converted tensors quantized with their importance vector.
    pub weighted: usize,
    /// Converted tensors the importance matrix has no entry for (quantized round-to-nearest,
    /// as llama-quantize does; the token embedding, which no product reads, is one).
    pub unweighted: Vec<String>,
    /// Tensors quantized with GPTQ.
    pub gptq: usize,
    /// Bytes of the whole output (header included), counted as written (the output may be a
    /// pipe or a device).
    pub file_bytes: u64,
}

/// What calibration gives the quantizer.
#[derive(Clone, Debug, Default)]
pub struct Calib<'a> {
    /// Importance per weight tensor: weights every block's search.
    pub imatrix: Option<&'a Imatrix>,
    /// The Hessian of each weight tensor's inputs (`cols x cols`), by tensor name: those
    /// tensors are quantized with GPTQ.
    pub hessians: BTreeMap<String, &'a [f64]>,
    pub gptq: GptqOptions,
    /// AWQ scales: the tensors they name are scaled before they are written (norms included,
    /// which are then written scaled in their own type).
    pub scaling: Option<&'a Scaling>,
    /// Values that replace the file's for these tensors (pruned matrices, `rows x cols` f32):
    /// written in the plan's target, F32 as they are or quantized from them (weighted by the
    /// importance where there is one); the error statistics are against the file's values.
    pub overrides: BTreeMap<String, Vec<f32>>,
}

/// A writer that counts what passes through it.
struct Counted<'a, W: std::io::Write> {
    inner: W,
    bytes: &'a mut u64,
}

impl<W: std::io::Write> std::io::Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        *self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `file` re-quantized as `plans` say into `out` (`file_type`: the file's main type, for
/// `general.file_type`), weighting every converted tensor that `imatrix` has an entry for.
/// `on_tensor` is called after each tensor with its plan (for progress). Nothing is left under
/// `out` unless the whole file was written.
pub fn quantize_file(
    file: &GgufFile,
    plans: &[TensorPlan],
    file_type: GgmlType,
    calib: &Calib,
    out: &Path,
    pool: &ThreadPool,
    on_tensor: &mut dyn FnMut(&TensorPlan),
) -> Result<Summary, CompressError> {
    if let (Some(input), Ok(a)) = (file.path(), out.canonicalize()) {
        if input.canonicalize().is_ok_and(|b| a == b) {
            return Err(CompressError::OutputIsInput(out.to_path_buf()));
        }
    }
    // Every entry's width is checked before any work; an imatrix whose names match none of the
    // converted tensors was made for another model.
    // A replaced tensor is quantized even into its own type.
    let converted: Vec<&TensorPlan> = plans.iter().filter(|p| p.target != p.t.ty || (calib.overrides.contains_key(&p.t.name) && p.t.dims.len() >= 2)).collect();
    let imatrix = calib.imatrix;
    let mut importance: BTreeMap<&str, Vec<f32>> = BTreeMap::new();
    if let Some(m) = imatrix {
        for p in &converted {
            if m.entries.contains_key(&p.t.name) {
                importance.insert(&p.t.name, m.importance_for(&p.t.name, p.t.row_len() as usize)?);
            }
        }
        if importance.is_empty() && !converted.is_empty() {
            let example = converted[0].t.name.clone();
            return Err(crate::imatrix::ImatrixError::Missing { tensor: example, n: m.entries.len(), example: m.entries.keys().next().cloned().unwrap_or_default() }.into());
        }
    }
    let unweighted: Vec<String> = if imatrix.is_some() { converted.iter().filter(|p| !importance.contains_key(p.t.name.as_str())).map(|p| p.t.name.clone()).collect() } else { Vec::new() };
    let mut meta = file.header.metadata.clone();
    meta.set("general.file_type", GgufValue::U32(file_type.llama_file_type()));
    meta.set("general.quantized_by", GgufValue::String(format!("smelt {}", env!("CARGO_PKG_VERSION"))));
    let specs: Vec<TensorSpec> = plans.iter().map(|p| TensorSpec { name: p.t.name.clone(), dims: p.t.dims.clone(), ty: p.target }).collect();
    let mut types: BTreeMap<GgmlType, ErrStat> = BTreeMap::new();
    let mut file_bytes = 0u64;
    let mut gptq_count = 0;
    write_atomic(
        out,
        |w| -> Result<(), CompressError> {
            let mut gw = GgufWriter::new(Counted { inner: &mut *w, bytes: &mut file_bytes }, file.header.version, &meta, specs)?;
            for p in plans {
                let data = file.tensor_data(p.t);
                let s = types.entry(p.target).or_default();
                s.params += p.t.n_elements;
                s.tensors += 1;
                let factors = calib.scaling.and_then(|sc| sc.get(&p.t.name));
                if let Some(values) = calib.overrides.get(&p.t.name) {
                    let imp = importance.get(p.t.name.as_str()).map(Vec::as_slice);
                    let c = replaced_tensor(pool, p, file, values, imp)?;
                    gw.write_tensor(&c.bytes)?;
                    (s.err2, s.x2, s.bytes) = (s.err2 + c.err2, s.x2 + c.x2, s.bytes + c.bytes.len() as u64);
                } else if let Some(f) = factors {
                    let imp = importance.get(p.t.name.as_str()).map(Vec::as_slice);
                    let h = calib.hessians.get(&p.t.name).filter(|_| gptq_fits(p));
                    gptq_count += h.is_some() as usize;
                    let c = scaled_tensor(pool, p, file, f, h.copied(), imp, calib.gptq)?;
                    gw.write_tensor(&c.bytes)?;
                    (s.err2, s.x2, s.bytes) = (s.err2 + c.err2, s.x2 + c.x2, s.bytes + c.bytes.len() as u64);
                } else if p.target == p.t.ty {
                    // Copied as it is; plain floats are still checked for NaN and infinity.
                    if p.t.ty.is_float() {
                        let values = file.tensor_f32(p.t).map_err(|source| CompressError::Quant { tensor: p.t.name.clone(), source })?;
                        if !smelt_kernels::math::all_finite(&values) {
                            return Err(CompressError::NonFinite { tensor: p.t.name.clone() });
                        }
                    }
                    gw.write_tensor(data)?;
                    s.bytes += data.len() as u64;
                } else {
                    let imp = importance.get(p.t.name.as_str()).map(Vec::as_slice);
                    let c = match calib.hessians.get(&p.t.name) {
                        Some(h) if gptq_fits(p) => {
                            gptq_count += 1;
                            gptq_tensor(pool, p, file, h, imp, calib.gptq)?
                        }
                        _ => convert(pool, p.t, data, p.target, imp)?,
                    };
                    gw.write_tensor(&c.bytes)?;
                    (s.err2, s.x2, s.bytes) = (s.err2 + c.err2, s.x2 + c.x2, s.bytes + c.bytes.len() as u64);
                }
                on_tensor(p);
            }
            gw.finish()?;
            Ok(())
        },
        |path, source| CompressError::Gguf(GgufError::Write { path, source }),
    )?;
    Ok(Summary { types, file_bytes, weighted: importance.len(), unweighted, gptq: gptq_count })
}

/// One tensor scaled by its AWQ factors, then written in its target type (GPTQ with the scaled
/// input's Hessian when `h` is given, else importance-weighted with the scaled input's
/// importance); the error statistics are those of the unscaled values against the input.
fn scaled_tensor(pool: &ThreadPool, p: &TensorPlan, file: &GgufFile, f: &Factors, h: Option<&[f64]>, importance: Option<&[f32]>, opts: GptqOptions) -> Result<Converted, CompressError> {
    let quant = |source| CompressError::Quant { tensor: p.t.name.clone(), source };
    let w0 = file.tensor_f32(p.t).map_err(quant)?;
    if !smelt_kernels::math::all_finite(&w0) {
        return Err(CompressError::NonFinite { tensor: p.t.name.clone() });
    }
    let cols = p.t.row_len() as usize;
    let mut w = w0.clone();
    f.apply(&mut w, cols);
    let imp = importance.map(|imp| f.importance(imp));
    let (bytes, mut back) = match h {
        Some(h) => {
            let h = f.hessian(h);
            let input = GptqInput { w: &w, rows: p.t.n_rows() as usize, cols, h: &h, importance: imp.as_deref() };
            let bytes = gptq(pool, input, p.target, opts).map_err(|source| CompressError::Gptq { tensor: p.t.name.clone(), source })?;
            let back = smelt_formats::quant::dequantize_to_vec(p.target, &bytes).map_err(quant)?;
            (bytes, back)
        }
        None => {
            let (c, back) = round_trip(pool, &p.t.name, &w, cols, p.target, imp.as_deref())?;
            (c.bytes, back)
        }
    };
    f.unapply(&mut back, cols);
    Ok(errors(bytes, &w0, &back, cols, importance))
}

/// `values` (replacing `p`'s tensor) written in `p`'s target, with the error statistics against
/// the file's values.
fn replaced_tensor(pool: &ThreadPool, p: &TensorPlan, file: &GgufFile, values: &[f32], importance: Option<&[f32]>) -> Result<Converted, CompressError> {
    let quant = |source| CompressError::Quant { tensor: p.t.name.clone(), source };
    let w0 = file.tensor_f32(p.t).map_err(quant)?;
    if values.len() != w0.len() || !smelt_kernels::math::all_finite(values) {
        return Err(CompressError::NonFinite { tensor: p.t.name.clone() });
    }
    let cols = p.t.row_len() as usize;
    let (bytes, back) = if p.target == GgmlType::F32 {
        (bytemuck::cast_slice(values).to_vec(), values.to_vec())
    } else {
        let (c, back) = round_trip(pool, &p.t.name, values, cols, p.target, importance)?;
        (c.bytes, back)
    };
    Ok(errors(bytes, &w0, &back, cols, importance))
}

/// The statistics of `back` written for `w` (`werr2` weighted by `importance` per column).
fn errors(bytes: Vec<u8>, w: &[f32], back: &[f32], cols: usize, importance: Option<&[f32]>) -> Converted {
    let (mut err2, mut x2, mut werr2) = (0f64, 0f64, 0f64);
    for (i, (a, b)) in w.iter().zip(back).enumerate() {
        let e2 = ((a - b) as f64).powi(2);
        (err2, x2) = (err2 + e2, x2 + (*a as f64).powi(2));
        werr2 += importance.map_or(1.0, |imp| imp[i % cols] as f64) * e2;
    }
    Converted { bytes, err2, x2, werr2 }
}

/// Whether GPTQ can write this plan's target (a type with a block grid, a 2-D matrix).
fn gptq_fits(p: &TensorPlan) -> bool {
    smelt_formats::quant::grid::supports_grid(p.target) && p.t.dims.len() == 2
}

/// One tensor through GPTQ, with the error statistics `convert` gives.
pub(crate) fn gptq_tensor(pool: &ThreadPool, p: &TensorPlan, file: &GgufFile, h: &[f64], importance: Option<&[f32]>, opts: GptqOptions) -> Result<Converted, CompressError> {
    let quant = |source| CompressError::Quant { tensor: p.t.name.clone(), source };
    let w = file.tensor_f32(p.t).map_err(quant)?;
    if !smelt_kernels::math::all_finite(&w) {
        return Err(CompressError::NonFinite { tensor: p.t.name.clone() });
    }
    let (rows, cols) = (p.t.n_rows() as usize, p.t.row_len() as usize);
    let input = GptqInput { w: &w, rows, cols, h, importance };
    let bytes = gptq(pool, input, p.target, opts).map_err(|source| CompressError::Gptq { tensor: p.t.name.clone(), source })?;
    let back = smelt_formats::quant::dequantize_to_vec(p.target, &bytes).map_err(quant)?;
    Ok(errors(bytes, &w, &back, cols, importance))
}
