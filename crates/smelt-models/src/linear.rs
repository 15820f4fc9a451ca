//! A linear layer `y = W x (+ b)` over any registry weight type: the model files hold the
//! weights, smelt-kernels multiplies them. Models are written once against this type, whatever the
//! quantization (F32, F16, BF16, every ggml block type).

use std::sync::Arc;

use smelt_formats::quant::{dequantize, quantize};
use smelt_formats::safetensors::{Dtype, SafetensorsFile};
use smelt_formats::{GgmlType, GgufFile, TensorInfo};
use smelt_kernels::matmul::{gemm, gemv, QMatrix};
use smelt_kernels::pool::ThreadPool;

use crate::lora::LoraPair;
use crate::ModelError;

/// Where a weight's bytes live.
#[derive(Clone)]
enum Bytes {
    /// A range of the memory-mapped model file.
    File { file: Arc<GgufFile>, start: usize, len: usize },
    /// A tensor of a memory-mapped safetensors file.
    Safetensors { file: Arc<SafetensorsFile>, index: usize },
    /// Converted at load time.
    Owned(Arc<Vec<u8>>),
}

/// A weight matrix `[rows = out_features, cols = in_features]`, row-major in its type's blocks,
/// with an optional bias (`rows` values, added to every product).
#[derive(Clone)]
pub struct Linear {
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    bytes: Bytes,
    bias: Option<Arc<Vec<f32>>>,
    /// A low-rank adapter and its scale, added to every product ([`crate::lora`]).
    lora: Option<(Arc<LoraPair>, f32)>,
}

impl std::fmt::Debug for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Linear({} {} [{} x {}])", self.name, self.ty, self.rows, self.cols)
    }
}

impl Linear {
    /// The 2-D tensor `name` of `file` (ggml dims `[cols, rows]`), optionally converted to `as_type`
    /// (dequantized and re-quantized with the reference quantizer at load time).
    pub fn load(file: &Arc<GgufFile>, name: &str, as_type: Option<GgmlType>) -> Result<Linear, ModelError> {
        let t = tensor(file, name)?;
        if t.dims.len() != 2 {
            return Err(ModelError::WrongShape { name: name.into(), found: t.dims.clone(), expected: vec![0, 0] });
        }
        let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
        let start = (file.header.data_offset + t.offset) as usize;
        let mut lin = Linear { name: name.into(), ty: t.ty, rows, cols, bytes: Bytes::File { file: file.clone(), start, len: t.n_bytes as usize }, bias: None, lora: None };
        if let Some(target) = as_type {
            lin = lin.to_type(target)?;
        }
        Ok(lin)
    }

    /// The 2-D tensor `name` (`[out, in]`, F32/F16/BF16) of a safetensors file.
    pub fn load_safetensors(file: &Arc<SafetensorsFile>, name: &str, as_type: Option<GgmlType>) -> Result<Linear, ModelError> {
        let index = file.tensors().iter().position(|t| t.name == name).ok_or_else(|| ModelError::MissingTensor { name: name.into(), arch: "safetensors".into() })?;
        let t = &file.tensors()[index];
        let ty = match t.dtype {
            Dtype::F32 => GgmlType::F32,
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::BF16,
            other => return Err(ModelError::Config(format!("{}: tensor {name:?} has dtype {other:?}; smelt reads F32, F16 and BF16 weight matrices", file.path().display()))),
        };
        if t.shape.len() != 2 {
            return Err(ModelError::WrongShape { name: name.into(), found: t.shape.iter().map(|&d| d as u64).collect(), expected: vec![0, 0] });
        }
        let lin = Linear { name: name.into(), ty, rows: t.shape[0], cols: t.shape[1], bytes: Bytes::Safetensors { file: file.clone(), index }, bias: None, lora: None };
        match as_type {
            Some(target) => lin.to_type(target),
            None => Ok(lin),
        }
    }

    /// This matrix in `target`, or in the type the fallback rule gives when its rows are not a
    /// whole number of `target`'s blocks ([`GgmlType::fallback_for_row`], the rule
    /// `smelt quantize` follows too); itself when it already is of that type.
    pub fn to_type(self, target: GgmlType) -> Result<Linear, ModelError> {
        let ty = target.fallback_for_row(self.cols as u64).unwrap_or(target);
        if ty == self.ty {
            Ok(self)
        } else {
            self.converted(ty)
        }
    }

    /// An owned f32 matrix `[rows, cols]` (row-major), optionally converted to `as_type`.
    pub fn from_f32(name: &str, rows: usize, cols: usize, data: Vec<f32>, as_type: Option<GgmlType>) -> Result<Linear, ModelError> {
        if data.len() != rows * cols {
            return Err(ModelError::WrongShape { name: name.into(), found: vec![data.len() as u64], expected: vec![rows as u64, cols as u64] });
        }
        let bytes = bytemuck::cast_slice::<f32, u8>(&data).to_vec();
        let lin = Linear { name: name.into(), ty: GgmlType::F32, rows, cols, bytes: Bytes::Owned(Arc::new(bytes)), bias: None, lora: None };
        match as_type {
            Some(target) => lin.to_type(target),
            None => Ok(lin),
        }
    }

    /// A matrix from bytes already in `ty`'s layout (`rows` rows of `cols` values).
    pub fn owned(name: &str, ty: GgmlType, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<Linear, ModelError> {
        let expected = ty.bytes_for(cols as u64).map(|b| b as usize * rows);
        if expected != Some(bytes.len()) {
            return Err(ModelError::WrongShape { name: name.into(), found: vec![bytes.len() as u64], expected: vec![expected.unwrap_or(0) as u64] });
        }
        Ok(Linear { name: name.into(), ty, rows, cols, bytes: Bytes::Owned(Arc::new(bytes)), bias: None, lora: None })
    }

    /// The rows of several matrices of one type and width stacked into one (`[sum rows, cols]`),
    /// e.g. Q, K and V as one product.
    pub fn stack(name: &str, parts: &[&Linear]) -> Result<Linear, ModelError> {
        let first = parts.first().ok_or_else(|| ModelError::Config(format!("{name}: nothing to stack")))?;
        if let Some(p) = parts.iter().find(|p| p.ty != first.ty || p.cols != first.cols) {
            return Err(ModelError::WrongShape { name: p.name.clone(), found: vec![p.rows as u64, p.cols as u64], expected: vec![p.rows as u64, first.cols as u64] });
        }
        let bytes: Vec<u8> = parts.iter().flat_map(|p| p.bytes().iter().copied()).collect();
        // A part without a bias adds zeros, so the stack has one when any part has.
        let bias = parts.iter().any(|p| p.bias.is_some()).then(|| Arc::new(parts.iter().flat_map(|p| p.bias.as_ref().map_or_else(|| vec![0.0; p.rows], |b| b.to_vec())).collect()));
        Ok(Linear { name: name.into(), ty: first.ty, rows: parts.iter().map(|p| p.rows).sum(), cols: first.cols, bytes: Bytes::Owned(Arc::new(bytes)), bias, lora: None })
    }

    /// A copy in another type.
    pub fn converted(&self, ty: GgmlType) -> Result<Linear, ModelError> {
        let convert = || -> Result<Vec<u8>, ModelError> {
            let mut f = vec![0f32; self.rows * self.cols];
            dequantize(self.ty, self.bytes(), &mut f)?;
            let mut out = vec![0u8; self.rows * (self.cols / ty.block_elems()) * ty.block_bytes()];
            quantize(ty, &f, &mut out)?;
            Ok(out)
        };
        let out = convert().map_err(|e| e.in_tensor(&self.name))?;
        Ok(Linear { name: self.name.clone(), ty, rows: self.rows, cols: self.cols, bytes: Bytes::Owned(Arc::new(out)), bias: self.bias.clone(), lora: self.lora.clone() })
    }

    /// This matrix with the bias `b` (`rows` finite values) added to its products.
    pub fn with_bias(mut self, b: Vec<f32>) -> Result<Linear, ModelError> {
        if b.len() != self.rows {
            return Err(ModelError::WrongShape { name: format!("{} (bias)", self.name), found: vec![b.len() as u64], expected: vec![self.rows as u64] });
        }
        crate::error::check_finite(&self.name, &b)?;
        self.bias = Some(Arc::new(b));
        Ok(self)
    }

    /// This matrix without a bias.
    pub fn without_bias(mut self) -> Linear {
        self.bias = None;
        self
    }

    /// This matrix with a low-rank adapter added to its products: `y += s (x A^T) B^T`.
    pub fn with_lora(mut self, pair: Arc<LoraPair>, s: f32) -> Result<Linear, ModelError> {
        if pair.rows != self.rows || pair.cols != self.cols {
            return Err(ModelError::WrongShape { name: format!("{} (LoRA)", self.name), found: vec![pair.cols as u64, pair.rows as u64], expected: vec![self.cols as u64, self.rows as u64] });
        }
        self.lora = Some((pair, s));
        Ok(self)
    }

    /// This matrix without its adapter.
    pub fn without_lora(mut self) -> Linear {
        self.lora = None;
        self
    }

    /// The adapter and its scale, when the layer has one.
    pub fn lora(&self) -> Option<(&LoraPair, f32)> {
        self.lora.as_ref().map(|(p, s)| (p.as_ref(), *s))
    }

    /// The bias, when the layer has one.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref().map(Vec::as_slice)
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::File { file, start, len } => {
                let data = file.tensor_data_range(*start, *len);
                data
            }
            Bytes::Safetensors { file, index } => file.data(&file.tensors()[*index]),
            Bytes::Owned(v) => v,
        }
    }

    pub fn matrix(&self) -> Result<QMatrix<'_>, ModelError> {
        QMatrix::new(self.ty, self.rows, self.cols, self.bytes()).map_err(|e| ModelError::from(e).in_tensor(&self.name))
    }

    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_elems() * self.ty.block_bytes()
    }

    /// Row `r` as f32 (an embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) -> Result<(), ModelError> {
        let rb = self.row_bytes();
        let bytes = self.bytes().get(r * rb..(r + 1) * rb).ok_or(ModelError::BadToken { id: r as u32, vocab: self.rows })?;
        dequantize(self.ty, bytes, out)?;
        Ok(())
    }

    /// `y = W x (+ b)`.
    pub fn forward(&self, pool: &ThreadPool, x: &[f32], y: &mut [f32], scratch: &mut Vec<u8>) -> Result<(), ModelError> {
        gemv(pool, &self.matrix()?, x, y, scratch)?;
        self.finish_rows(x, 1, y);
        Ok(())
    }

    /// What follows the weight product for `m` rows of input `x`: the adapter's term (if any)
    /// and the bias (if any) added to every row of `y` (`rows` values each). Callers that run
    /// the product themselves (several matrices at once) call it after.
    pub fn finish_rows(&self, x: &[f32], m: usize, y: &mut [f32]) {
        if let Some((p, s)) = &self.lora {
            p.add_to(&x[..m * self.cols], m, *s, &mut y[..m * self.rows]);
        }
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(self.rows) {
                for (v, b) in row.iter_mut().zip(b.iter()) {
                    *v += b;
                }
            }
        }
    }

    /// `Y = X W^T (+ b)` for `m` rows: a matrix-vector product for one row, matrix-matrix otherwise.
    pub fn apply(&self, pool: &ThreadPool, x: &[f32], m: usize, y: &mut [f32], scratch: &mut Vec<u8>) -> Result<(), ModelError> {
        if m == 1 {
            self.forward(pool, &x[..self.cols], &mut y[..self.rows], scratch)
        } else {
            self.forward_batch(pool, &x[..m * self.cols], m, &mut y[..m * self.rows], scratch)
        }
    }

    /// `Y = X W^T (+ b)` for `m` rows of `X`.
    pub fn forward_batch(&self, pool: &ThreadPool, x: &[f32], m: usize, y: &mut [f32], scratch: &mut Vec<u8>) -> Result<(), ModelError> {
        gemm(pool, &self.matrix()?, x, m, y, scratch)?;
        self.finish_rows(x, m, y);
        Ok(())
    }
}

/// The info of tensor `name`, or a clear error naming it.
pub fn tensor<'a>(file: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    file.tensor(name).ok_or_else(|| ModelError::MissingTensor {
        name: name.into(),
        arch: file.header.architecture().unwrap_or("?").into(),
    })
}

/// A 1-D tensor (norm weights, biases) as f32, checking its length and that every value is
/// finite (these tensors are small: the scan costs nothing at load).
pub fn vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let t = tensor(file, name)?;
    if t.n_elements as usize != len {
        return Err(ModelError::WrongShape { name: name.into(), found: t.dims.clone(), expected: vec![len as u64] });
    }
    let v = file.tensor_f32(t)?;
    crate::error::check_finite(name, &v)?;
    Ok(v)
}
