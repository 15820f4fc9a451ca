//! Which type every tensor of a GGUF file becomes.
//!
//! Rules, in order: a tensor matching a `keep` glob stays as it is; 1-D tensors (norms, biases)
//! stay; the token embedding and a separate output head take their own targets when given;
//! every other matrix takes `to`, but a 2:4 sparse type only where the matrix is 2:4 sparse
//! (its dense twin elsewhere: quantizing never prunes). A matrix whose rows are not a whole number of its target's
//! blocks follows [`GgmlType::fallback_for_row`], the rule every conversion path shares.

use smelt_formats::{GgmlType, GgufFile, TensorInfo};

use crate::CompressError;

/// The start of the note of a dense matrix asked for a 2:4 sparse type.
const NOT_2_4: &str = "not 2:4 sparse";

/// What to quantize to.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeConfig {
    /// Target of the weight matrices.
    pub to: GgmlType,
    /// Target of `token_embd.weight` (also the output head of tied models); default `to`.
    pub embed_type: Option<GgmlType>,
    /// Target of a separate `output.weight`; default `to`.
    pub output_type: Option<GgmlType>,
    /// Globs (`*` matches any run) of tensors kept in their current type.
    pub keep: Vec<String>,
}

impl QuantizeConfig {
    pub fn new(to: GgmlType) -> QuantizeConfig {
        QuantizeConfig { to, embed_type: None, output_type: None, keep: Vec::new() }
    }
}

/// What happens to one tensor.
#[derive(Clone, Debug)]
pub struct TensorPlan<'a> {
    pub t: &'a TensorInfo,
    pub target: GgmlType,
    /// Why the target differs from what was asked (a kept tensor, a fallback).
    pub note: Option<String>,
}

impl TensorPlan<'_> {
    /// Whether the target is a fallback from the asked type (rows that do not divide into its
    /// blocks; a dense matrix asked for a 2:4 sparse type).
    pub fn is_fallback(&self) -> bool {
        self.note.as_deref().is_some_and(|n| n.starts_with("rows") || n.starts_with(NOT_2_4))
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else { return false };
            (0..=tail.len()).filter(|&i| tail.is_char_boundary(i)).any(|i| glob(rest, &tail[i..]))
        }
    }
}

/// The plan for every tensor of `file`, in file order.
pub fn plan<'a>(file: &'a GgufFile, cfg: &QuantizeConfig) -> Result<Vec<TensorPlan<'a>>, CompressError> {
    let mut plans = Vec::with_capacity(file.tensors().len());
    for t in file.tensors() {
        if let Some(p) = cfg.keep.iter().find(|p| glob(p, &t.name)) {
            plans.push(TensorPlan { t, target: t.ty, note: Some(format!("kept (--keep {p})")) });
            continue;
        }
        let wanted = match t.name.as_str() {
            _ if t.dims.len() < 2 => t.ty,
            "token_embd.weight" => cfg.embed_type.unwrap_or(cfg.to),
            "output.weight" => cfg.output_type.unwrap_or(cfg.to),
            _ => cfg.to,
        };
        if wanted == t.ty {
            plans.push(TensorPlan { t, target: t.ty, note: None });
            continue;
        }
        if !t.ty.can_dequantize() {
            return Err(CompressError::Unreadable { tensor: t.name.clone(), ty: t.ty });
        }
        let plan = match wanted.fallback_for_row(t.row_len()) {
            Some(next) => TensorPlan { t, target: next, note: Some(format!("rows of {} are not a multiple of {}'s {}; using {next}", t.row_len(), wanted, wanted.block_elems())) },
            None if wanted.is_sparse() && !is_2_4_sparse(file, t)? => {
                let dense = wanted.dense_twin();
                TensorPlan { t, target: dense, note: Some(format!("{NOT_2_4} (see smelt prune --pattern 2:4); using {dense}")) }
            }
            None => TensorPlan { t, target: wanted, note: None },
        };
        plans.push(plan);
    }
    Ok(plans)
}

/// Whether every aligned group of four weights of `t` holds at most two non-zeros (what the
/// 2:4 sparse types store without pruning anything themselves).
fn is_2_4_sparse(file: &GgufFile, t: &TensorInfo) -> Result<bool, CompressError> {
    let w = smelt_formats::quant::dequantize_to_vec(t.ty, file.tensor_data(t)).map_err(|source| CompressError::Quant { tensor: t.name.clone(), source })?;
    Ok(smelt_formats::quant::sparse::is_2_4_sparse(&w))
}

/// The type holding most of the matrices' bytes (as read) under `plans` (for `general.file_type`
/// of a file whose tensors keep their types).
pub fn main_type(plans: &[TensorPlan]) -> GgmlType {
    let mut bytes: std::collections::BTreeMap<&str, (u64, GgmlType)> = Default::default();
    for p in plans.iter().filter(|p| p.t.dims.len() >= 2) {
        bytes.entry(p.target.name()).or_insert((0, p.target)).0 += p.t.n_bytes;
    }
    bytes.values().max_by_key(|(b, _)| *b).map_or(GgmlType::F32, |(_, t)| *t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("blk.0.*", "blk.0.attn_q.weight"));
        assert!(!glob("blk.0.*", "blk.10.attn_q.weight"));
        assert!(glob("*.attn_v.weight", "blk.3.attn_v.weight"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("token_embd.weight", "token_embd.weight"));
    }
}
