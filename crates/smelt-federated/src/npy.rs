//! The tensors Flower exchanges (`tensor_type = "numpy.ndarray"`: each tensor is the bytes
//! `numpy.save(..., allow_pickle=False)` writes), read and written with smelt's NPY module
//! ([`smelt_formats::npy`]).
//!
//! Parameters are float arrays: float32 is sent; float32 or float64 (converted) is accepted, and
//! any other element type (integers, float16, pickled objects), a wrong size or more elements
//! than the caller allows is refused.

use smelt_formats::npy::{read_npy, to_npy_bytes, NpyArray, NpyData};

use crate::FedError;

/// A parameter tensor: its shape (empty for a scalar) and its elements in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor; `data` holds the product of `shape` elements.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "a tensor's shape and element count disagree");
        Tensor { shape, data }
    }
}

/// The `.npy` bytes (version 1.0, `<f4`, C order) of `t`.
pub fn encode(t: &Tensor) -> Vec<u8> {
    // Writing to memory fails only on a shape/data mismatch, which `Tensor::new` rules out.
    to_npy_bytes(&NpyArray { shape: t.shape.clone(), data: NpyData::F32(t.data.clone()) }).unwrap_or_default()
}

/// Reads one `.npy` float tensor of at most `max_elements` elements.
pub fn decode(bytes: &[u8], max_elements: usize) -> Result<Tensor, FedError> {
    let a = read_npy(bytes).map_err(|e| FedError::Npy(e.to_string()))?;
    if a.data.len() > max_elements {
        return Err(FedError::Npy(format!("shape {:?} is larger than the {max_elements} elements allowed", a.shape)));
    }
    let data = match &a.data {
        NpyData::F32(v) => v.clone(),
        NpyData::F64(v) => v.iter().map(|&x| x as f32).collect(),
        other => {
            let kind = match other {
                NpyData::F16(_) => "float16 ('<f2')",
                NpyData::I64(_) => "int64 ('<i8')",
                NpyData::I32(_) => "int32 ('<i4')",
                NpyData::I8(_) => "int8 ('|i1')",
                _ => "uint8 ('|u1')",
            };
            return Err(FedError::Npy(format!("element type {kind}: only float32 ('<f4') or float64 ('<f8') parameters are accepted")));
        }
    };
    Ok(Tensor { shape: a.shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_trip_and_other_types_are_refused() {
        for shape in [vec![], vec![3], vec![2, 3], vec![1, 0]] {
            let n = shape.iter().product();
            let t = Tensor::new(shape, (0..n).map(|i| i as f32 * 0.5 - 1.0).collect());
            assert_eq!(decode(&encode(&t), 100).unwrap(), t);
        }
        let wide = to_npy_bytes(&NpyArray { shape: vec![2], data: NpyData::F64(vec![0.25, -1e300]) }).unwrap();
        assert_eq!(decode(&wide, 2).unwrap().data, vec![0.25, f32::NEG_INFINITY], "converted (the client's finiteness check refuses the overflow)");
        let ints = to_npy_bytes(&NpyArray { shape: vec![2], data: NpyData::I32(vec![1, 2]) }).unwrap();
        assert!(decode(&ints, 2).unwrap_err().to_string().contains("<i4"));
        assert!(decode(&encode(&Tensor::new(vec![2, 2], vec![1.0; 4])), 3).is_err(), "over the element limit");
        let good = encode(&Tensor::new(vec![2, 2], vec![1.0; 4]));
        assert!(decode(&good[..good.len() - 1], 100).is_err(), "truncated");
    }
}
