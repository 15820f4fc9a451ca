//! A LoRA adapter merged into its base: every adapted matrix becomes `W + s B A` (computed in f32
//! from the dequantized `W`, `s` = the adapter's `alpha / r` times a strength) and is written in
//! its own type or a given one; every other tensor is copied. The result is a plain GGUF.

use std::collections::BTreeMap;
use std::path::Path;

use smelt_formats::GgufFile;
use smelt_kernels::pool::ThreadPool;
use smelt_models::lora::LoraAdapter;

use crate::imatrix::Imatrix;
use crate::{quantize_file, Calib, CompressError, Summary, TensorPlan};

/// Writes `file` with `adapter` merged (scaled by `strength`) into `out`; the adapted matrices
/// in `to` (default: their own type; the fallback rule for rows that do not divide into blocks).
/// With `imatrix`, the adapted matrices it has entries for are quantized minimizing the
/// importance-weighted error. Refuses an adapter for another base (a tensor it names is missing
/// or of another shape).
#[allow(clippy::too_many_arguments)]
pub fn merge_adapter(file: &GgufFile, adapter: &LoraAdapter, strength: f32, to: Option<smelt_formats::GgmlType>, imatrix: Option<&Imatrix>, out: &Path, pool: &ThreadPool, on_tensor: &mut dyn FnMut(&TensorPlan)) -> Result<Summary, CompressError> {
    if !strength.is_finite() {
        return Err(CompressError::Finetune(format!("merge strength {strength}: must be a finite number")));
    }
    if file.header.architecture() != Some(adapter.arch.as_str()) {
        return Err(CompressError::Finetune(format!("the adapter is for architecture {:?}, the model is {:?}", adapter.arch, file.header.architecture().unwrap_or("unknown"))));
    }
    let mut overrides = BTreeMap::new();
    for (name, pair) in &adapter.pairs {
        let t = file.tensor(name).ok_or_else(|| CompressError::Finetune(format!("the adapter changes {name}, which the model does not have: is it for another base model?")))?;
        if t.dims.len() != 2 || (t.dims[0] as usize, t.dims[1] as usize) != (pair.cols, pair.rows) {
            return Err(CompressError::Finetune(format!("the adapter's {name} is {} x {}, the model's is {:?}: is it for another base model?", pair.rows, pair.cols, t.dims)));
        }
        if !t.ty.can_dequantize() {
            return Err(CompressError::Unreadable { tensor: name.clone(), ty: t.ty });
        }
        let mut w = file.tensor_f32(t).map_err(|source| CompressError::Quant { tensor: name.clone(), source })?;
        w.iter_mut().zip(pair.delta(strength * adapter.scale(pair.rank))).for_each(|(w, d)| *w += d);
        overrides.insert(name.clone(), w);
    }
    let plans: Vec<TensorPlan> = file
        .tensors()
        .iter()
        .map(|t| match (overrides.contains_key(&t.name), to) {
            // A merged matrix is dense: a 2:4 sparse type would prune it again.
            (true, ty) if ty.unwrap_or(t.ty).is_sparse() => {
                let dense = ty.unwrap_or(t.ty).dense_twin();
                TensorPlan { t, target: dense, note: Some(format!("the merged matrix is not 2:4 sparse; using {dense}")) }
            }
            (true, Some(ty)) => match ty.fallback_for_row(t.row_len()) {
                Some(next) => TensorPlan { t, target: next, note: Some(format!("rows of {} are not a multiple of {ty}'s {}; using {next}", t.row_len(), ty.block_elems())) },
                None => TensorPlan { t, target: ty, note: None },
            },
            _ => TensorPlan { t, target: t.ty, note: None },
        })
        .collect();
    // `general.file_type` names the main type: `to`, else the type holding most bytes.
    let mut bytes: BTreeMap<smelt_formats::GgmlType, u64> = BTreeMap::new();
    file.tensors().iter().for_each(|t| *bytes.entry(t.ty).or_default() += t.n_bytes);
    let main = to.or_else(|| bytes.into_iter().max_by_key(|(_, b)| *b).map(|(t, _)| t)).unwrap_or(smelt_formats::GgmlType::F32);
    quantize_file(file, &plans, main, &Calib { overrides, imatrix, ..Default::default() }, out, pool, on_tensor)
}
