//! Knowledge distillation (Hinton et al. 2015): a smaller student learns to reproduce a teacher.
//! Encoders ([`encoder`]) learn the teacher's sentence vectors; the student is the teacher with
//! layers dropped or narrowed (the pruning module's output), trained by [`smelt_train`].

pub mod decoder;
pub mod encoder;
pub mod student;

use std::path::Path;

use smelt_formats::safetensors::{serialize_f32, SafetensorsFile};
use smelt_formats::gguf::{GgufValue, TensorSpec};
use smelt_formats::{GgmlType, GgufFile};
use smelt_models::backward::{BertTrain, LlamaTrain};

use smelt_train::{StepStats, TrainError};

use crate::encoder_dir::write_encoder_dir;
use crate::CompressError;

/// An objective's step as the loop takes it: activations that overflowed are a diverging run,
/// reported as a NaN loss (so the loop stops with its advice and names the checkpoint it keeps),
/// not as a broken model; other failures become the objective's error.
pub(crate) fn step_result(r: Result<StepStats, CompressError>) -> Result<StepStats, TrainError> {
    match r {
        Err(CompressError::Model(smelt_models::ModelError::NonFiniteActivation { .. })) => Ok(StepStats { loss: f64::NAN, tokens: 0 }),
        r => r.map_err(|e| TrainError::Objective(e.to_string())),
    }
}

/// Writes `student` as a sentence-transformers directory `out`: the side files of `source` (the
/// directory the student was made from), its config.json with the student's layer count, FFN
/// width and pruned heads, and F32 weights: the student's, plus the tensors of `source` that are
/// not trained and belong to no removed layer (BERT's pooler).
pub fn write_encoder_student(student: &BertTrain, source: &Path, out: &Path) -> Result<(), CompressError> {
    let bad = |m: String| CompressError::Output(m);
    let st = SafetensorsFile::open(source.join("model.safetensors")).map_err(|e| bad(format!("reading {}: {e}", source.join("model.safetensors").display())))?;
    let mut tensors = student.params.tensors();
    let layer_prefix = format!("{}encoder.layer.", student.prefix());
    for t in st.tensors() {
        if student.params.get(&t.name).is_none() && !t.name.starts_with(&layer_prefix) {
            tensors.push((t.name.clone(), t.shape.clone(), st.tensor_f32(&t.name, None).map_err(|e| bad(e.to_string()))?));
        }
    }
    let bytes = serialize_f32(&tensors).map_err(|e| bad(e.to_string()))?;
    let path = source.join("config.json");
    let mut config: serde_json::Value = std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    config["num_hidden_layers"] = serde_json::json!(student.cfg.num_hidden_layers);
    config["intermediate_size"] = serde_json::json!(student.cfg.intermediate_size);
    config["num_attention_heads"] = serde_json::json!(student.cfg.num_attention_heads);
    match config.as_object_mut() {
        Some(o) if student.cfg.pruned_heads.is_empty() => {
            o.remove("pruned_heads");
        }
        _ => config["pruned_heads"] = serde_json::json!(student.cfg.pruned_heads),
    }
    write_encoder_dir(source, &config, &bytes, out)
}

/// Writes `student` as a GGUF `out` with the metadata of `source` (the file the student was made
/// from: its layer count and per-layer widths) and every weight in F32 (`smelt quantize` makes it
/// small again); atomically. Returns the bytes written.
pub fn write_decoder_student(student: &LlamaTrain, source: &GgufFile, out: &Path) -> Result<u64, CompressError> {
    let mut meta = source.header.metadata.clone();
    if meta.get("general.file_type").is_some() {
        meta.set("general.file_type", GgufValue::U32(0)); // LLAMA_FTYPE_ALL_F32
    }
    let mut tensors = Vec::new();
    for t in source.tensors() {
        let spec = match student.params.get(&t.name) {
            Some(values) => {
                if values.len() as u64 != t.dims.iter().product::<u64>() {
                    return Err(CompressError::Output(format!("{}: the student has {} values, the source file {:?}", t.name, values.len(), t.dims)));
                }
                // GGUF is little-endian: on such a machine the values are their own bytes (no
                // copy of the 400 MB a SmolLM2 student holds).
                let bytes = if cfg!(target_endian = "little") { std::borrow::Cow::Borrowed(bytemuck::cast_slice(values)) } else { std::borrow::Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()) };
                (TensorSpec { name: t.name.clone(), dims: t.dims.clone(), ty: GgmlType::F32 }, bytes)
            }
            None => (TensorSpec { name: t.name.clone(), dims: t.dims.clone(), ty: t.ty }, std::borrow::Cow::Borrowed(source.tensor_data(t))),
        };
        tensors.push(spec);
    }
    crate::prune::write_gguf(source, &meta, tensors, out)
}
