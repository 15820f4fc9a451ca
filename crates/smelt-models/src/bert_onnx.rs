//! BERT weights from an ONNX export (e.g. paraphrase-MiniLM-L3-v2 as sentence-transformers or
//! `optimum` export it). Only the initializers are used; the graph is read for three facts the
//! weights do not carry: which MatMul weight belongs to which layer, the attention scale (hence
//! the head count) and the LayerNorm epsilon.
//!
//! Exporters keep the HF names of embeddings, biases and norms (with a prefix such as
//! `model.0.auto_model.`) but often rename the dense weights to `onnx::MatMul_N`, stored
//! transposed (`[in, out]`). Those are taken in graph order: per layer query, key, value,
//! attention output, intermediate, output. When the HF names `...query.weight` exist instead,
//! they are used as they are (`[out, in]`).

use std::collections::HashMap;
use std::path::Path;

use smelt_formats::hf_config::BertConfig;
use smelt_formats::onnx::{OnnxFile, FLOAT};
use smelt_formats::GgmlType;

use crate::bert::{Bert, WeightSource};
use crate::error::check_finite;
use crate::linear::Linear;
use crate::ModelError;

const DENSE: [&str; 6] = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense"];

struct OnnxWeights {
    file: OnnxFile,
    prefix: String,
    /// HF weight name (without prefix) -> (initializer index, stored transposed).
    dense: HashMap<String, (usize, bool)>,
}

fn unprefixed<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

impl WeightSource for OnnxWeights {
    fn matrix(&self, name: &str, rows: usize, cols: usize, as_type: Option<GgmlType>) -> Result<Linear, ModelError> {
        let key = unprefixed(name, &self.prefix);
        let (index, transposed) = match self.dense.get(key) {
            Some(&e) => e,
            None => (self.file.initializers.iter().position(|t| t.name == name).ok_or_else(|| ModelError::MissingTensor { name: name.into(), arch: "ONNX BERT".into() })?, false),
        };
        let t = &self.file.initializers[index];
        let shape = if transposed { [cols as i64, rows as i64] } else { [rows as i64, cols as i64] };
        let data = self.file.floats(t, Some(&shape))?;
        let data = if transposed {
            let mut out = vec![0f32; rows * cols];
            for (i, row) in data.chunks_exact(rows).enumerate() {
                for (o, &v) in row.iter().enumerate() {
                    out[o * cols + i] = v;
                }
            }
            out
        } else {
            data
        };
        Linear::from_f32(name, rows, cols, data, as_type)
    }

    fn vector(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let t = self.file.initializer(name)?;
        if checked_len(&t.dims) != Some(shape.iter().product()) {
            return Err(ModelError::WrongShape { name: name.into(), found: t.dims.iter().map(|&d| d as u64).collect(), expected: shape.iter().map(|&d| d as u64).collect() });
        }
        let v = self.file.floats(t, None)?;
        check_finite(name, &v)?;
        Ok(v)
    }
}

/// Elements of a tensor of `dims`, `None` for negative or overflowing dims.
fn checked_len(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
}

/// Loads a BERT encoder from an ONNX file (weights converted to `as_type` when given).
pub fn load(path: &Path, as_type: Option<GgmlType>) -> Result<Bert, ModelError> {
    let file = OnnxFile::open(path)?;
    let cfg_err = |m: String| ModelError::Config(format!("{}: {m}", path.display()));
    let word = file
        .initializers
        .iter()
        .find(|t| t.name.ends_with("embeddings.word_embeddings.weight"))
        .ok_or_else(|| cfg_err("no embeddings.word_embeddings.weight initializer: not a BERT export".into()))?;
    let prefix = word.name.trim_end_matches("embeddings.word_embeddings.weight").to_string();
    let dims2 = |suffix: &str| -> Result<(usize, usize), ModelError> {
        let t = file.initializer(&format!("{prefix}{suffix}"))?;
        match t.dims[..] {
            [a, b] if a > 0 && b > 0 => Ok((a as usize, b as usize)),
            _ => Err(cfg_err(format!("{suffix} has shape {:?}", t.dims))),
        }
    };
    let (vocab_size, hidden_size) = dims2("embeddings.word_embeddings.weight")?;
    let (max_position_embeddings, _) = dims2("embeddings.position_embeddings.weight")?;
    let (type_vocab_size, _) = dims2("embeddings.token_type_embeddings.weight")?;
    // Layers: one past the highest index any initializer names, so that a missing tensor of a
    // layer is an error rather than a model silently cut short.
    let layer_prefix = format!("{prefix}encoder.layer.");
    let num_hidden_layers = file
        .initializers
        .iter()
        .filter_map(|t| t.name.strip_prefix(&layer_prefix)?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |i| i + 1);
    let intermediate_size = checked_len(&file.initializer(&format!("{prefix}encoder.layer.0.intermediate.dense.bias"))?.dims).unwrap_or(0);

    // Dense weights: HF-named, else the MatMul weights in graph order.
    let mut dense = HashMap::new();
    let index: HashMap<&str, usize> = file.initializers.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
    // With HF names present, WeightSource::matrix finds the weights by name.
    if !index.contains_key(format!("{prefix}encoder.layer.0.attention.self.query.weight").as_str()) {
        let mats: Vec<usize> = file
            .nodes
            .iter()
            .filter(|n| n.op_type == "MatMul")
            .filter_map(|n| n.inputs.get(1).and_then(|w| index.get(w.as_str()).copied()))
            .filter(|&i| file.initializers[i].dims.len() == 2 && file.initializers[i].data_type == FLOAT)
            .collect();
        if mats.len() != DENSE.len() * num_hidden_layers {
            return Err(cfg_err(format!("found {} MatMul weights, expected {} for {num_hidden_layers} layers", mats.len(), DENSE.len() * num_hidden_layers)));
        }
        for (k, &i) in mats.iter().enumerate() {
            dense.insert(format!("encoder.layer.{}.{}.weight", k / DENSE.len(), DENSE[k % DENSE.len()]), (i, true));
        }
    }

    let num_attention_heads = heads_from_scale(&file, hidden_size).ok_or_else(|| cfg_err("cannot find the attention scale 1/sqrt(head_dim) in the graph to infer the head count".into()))?;
    let layer_norm_eps = file
        .nodes
        .iter()
        .find(|n| n.op_type == "LayerNormalization")
        .and_then(|n| n.attributes.iter().find(|a| a.name == "epsilon"))
        .and_then(|a| a.f)
        .map_or(1e-12, f64::from);
    let cfg = BertConfig {
        hidden_size,
        num_hidden_layers,
        num_attention_heads,
        intermediate_size,
        max_position_embeddings,
        vocab_size,
        type_vocab_size,
        layer_norm_eps,
        hidden_act: "gelu".into(),
        pad_token_id: 0,
        position_embedding_type: "absolute".into(),
        pruned_heads: Default::default(),
    };
    let src = OnnxWeights { file, prefix: prefix.clone(), dense };
    let name = move |s: &str| format!("{prefix}{s}");
    Bert::build(cfg, &src, &name, as_type)
}

/// The head count from the attention scale: a scalar constant `c` that divides the scores
/// (`c = sqrt(head_dim)`) or multiplies them (`c = 1/sqrt(head_dim)`), where `head_dim` divides
/// the hidden size.
fn heads_from_scale(file: &OnnxFile, hidden: usize) -> Option<usize> {
    let consts: HashMap<&str, f64> = file
        .nodes
        .iter()
        .filter(|n| n.op_type == "Constant")
        .filter_map(|n| {
            let t = n.attributes.iter().find(|a| a.name == "value")?.t.as_ref()?;
            let v = file.values(t);
            if v.len() == 1 { Some((n.outputs.first()?.as_str(), v[0])) } else { None }
        })
        .chain(file.initializers.iter().filter(|t| checked_len(&t.dims) == Some(1)).filter_map(|t| Some((t.name.as_str(), *file.values(t).first()?))))
        .collect();
    for n in &file.nodes {
        let in_attention = n.outputs.iter().any(|o| o.contains("attention")) || n.name.contains("attention");
        if !in_attention || !(n.op_type == "Div" || n.op_type == "Mul") {
            continue;
        }
        for input in &n.inputs {
            let Some(&c) = consts.get(input.as_str()) else { continue };
            let hd = if n.op_type == "Div" { c * c } else { 1.0 / (c * c) };
            let r = hd.round();
            if r >= 4.0 && (hd - r).abs() < 1e-3 * r && hidden.is_multiple_of(r as usize) {
                return Some(hidden / r as usize);
            }
        }
    }
    None
}
