//! A trainable model's parameters: named f32 tensors laid out one after another in a single
//! buffer (llm.c's layout), so that the optimizer, gradient clipping and checkpoints each see one
//! slice, and a gradient buffer of the same length lines up with it element for element.

use std::ops::Range;

use crate::ModelError;

/// One named tensor: where it lies in [`Params::data`] and its shape (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub name: String,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
}

/// Named tensors in one flat buffer.
#[derive(Clone, Debug, Default)]
pub struct Params {
    pub data: Vec<f32>,
    pub slots: Vec<Slot>,
}

impl Params {
    /// Appends `values` as tensor `name` of `shape`; returns its range.
    pub fn push(&mut self, name: &str, shape: &[usize], values: &[f32]) -> Result<Range<usize>, ModelError> {
        let n: usize = shape.iter().product();
        if n != values.len() {
            return Err(ModelError::WrongShape { name: name.into(), found: vec![values.len() as u64], expected: shape.iter().map(|&d| d as u64).collect() });
        }
        if self.slots.iter().any(|s| s.name == name) {
            return Err(ModelError::hyper("parameter", name, "appears twice"));
        }
        let range = self.data.len()..self.data.len() + n;
        self.data.extend_from_slice(values);
        self.slots.push(Slot { name: name.into(), shape: shape.to_vec(), range: range.clone() });
        Ok(range)
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.slots.iter().find(|s| s.name == name).map(|s| &self.data[s.range.clone()])
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Every tensor as `(name, shape, values)`, ready for `safetensors::serialize_f32`.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.slots.iter().map(|s| (s.name.clone(), s.shape.clone(), self.data[s.range.clone()].to_vec())).collect()
    }
}
