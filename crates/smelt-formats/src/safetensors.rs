//! safetensors files (HF's format: an 8-byte header length, a JSON header, raw little-endian
//! C-order data), memory-mapped. Parsing and validation are the `safetensors` crate's; this
//! module adds typed errors, shape checks and conversion of any float or integer dtype to f32.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
pub use safetensors::Dtype;

use crate::error::SafetensorsError;
use crate::storage::Storage;

/// One tensor's description; `start..end` is its absolute byte range in the file.
#[derive(Clone, Debug)]
pub struct StTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

impl StTensor {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An open safetensors file.
pub struct SafetensorsFile {
    storage: Storage,
    path: PathBuf,
    tensors: Vec<StTensor>,
    /// The optional `__metadata__` string map.
    pub metadata: Vec<(String, String)>,
}

impl SafetensorsFile {
    /// Opens and validates `path` (memory-mapped).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SafetensorsError> {
        let path = path.as_ref().to_path_buf();
        let storage = Storage::map(&path).map_err(|source| SafetensorsError::Io { path: path.clone(), source })?;
        Self::from_storage(storage, path)
    }

    /// Parses a file held in memory (`name` is used in messages).
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self, SafetensorsError> {
        Self::from_storage(Storage::Owned(bytes), PathBuf::from(name))
    }

    fn from_storage(storage: Storage, path: PathBuf) -> Result<Self, SafetensorsError> {
        // Duplicates first: the crate's parser keeps the last of two equal names, and then
        // reports the hole the other leaves as a bad offset.
        let header_len = storage.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
        let header = header_len.and_then(|n| storage.get(8..8usize.checked_add(usize::try_from(n).ok()?)?));
        if let Some(name) = header.and_then(first_duplicate_key) {
            return Err(SafetensorsError::Invalid { path, reason: format!("the header names tensor {name:?} twice") });
        }
        let (n, meta) = safetensors::SafeTensors::read_metadata(&storage)
            .map_err(|e| SafetensorsError::Invalid { path: path.clone(), reason: e.to_string() })?;
        let base = 8 + n;
        let infos = meta.tensors();
        let mut tensors: Vec<StTensor> = meta
            .offset_keys()
            .into_iter()
            .filter_map(|name| {
                let i = infos.get(&name)?;
                Some(StTensor { dtype: i.dtype, shape: i.shape.clone(), start: base + i.data_offsets.0, end: base + i.data_offsets.1, name })
            })
            .collect();
        tensors.sort_by_key(|t| t.start);
        let mut metadata: Vec<(String, String)> = meta.metadata().clone().unwrap_or_default().into_iter().collect();
        metadata.sort();
        Ok(SafetensorsFile { storage, path, tensors, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[StTensor] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Result<&StTensor, SafetensorsError> {
        self.tensors.iter().find(|t| t.name == name).ok_or_else(|| SafetensorsError::MissingTensor {
            path: self.path.clone(),
            name: name.into(),
            available: self.tensors.len(),
        })
    }

    /// Raw bytes of a tensor (zero-copy).
    pub fn data(&self, t: &StTensor) -> &[u8] {
        &self.storage[t.start..t.end]
    }

    /// A tensor converted to f32, checking its shape when `expected` is given.
    pub fn tensor_f32(&self, name: &str, expected: Option<&[usize]>) -> Result<Vec<f32>, SafetensorsError> {
        let t = self.get(name)?;
        if let Some(shape) = expected {
            if t.shape != shape {
                return Err(SafetensorsError::WrongShape { path: self.path.clone(), name: name.into(), found: t.shape.clone(), expected: shape.to_vec() });
            }
        }
        to_f32(self.data(t), t.dtype).ok_or_else(|| SafetensorsError::UnsupportedDtype {
            path: self.path.clone(),
            name: name.into(),
            dtype: format!("{:?}", t.dtype),
        })
    }

    /// Total parameters (elements of all tensors).
    pub fn n_params(&self) -> usize {
        self.tensors.iter().map(|t| t.n_elements()).sum()
    }
}

/// Converts little-endian elements of `dtype` to f32; `None` for dtypes without a conversion.
pub fn to_f32(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    fn conv<const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        b.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect()
    }
    Some(match dtype {
        Dtype::F32 => conv(bytes, f32::from_le_bytes),
        Dtype::F16 => conv(bytes, |b| f16::from_le_bytes(b).to_f32()),
        Dtype::BF16 => conv(bytes, |b| bf16::from_le_bytes(b).to_f32()),
        Dtype::F64 => conv(bytes, |b| f64::from_le_bytes(b) as f32),
        Dtype::I64 => conv(bytes, |b| i64::from_le_bytes(b) as f32),
        Dtype::U64 => conv(bytes, |b| u64::from_le_bytes(b) as f32),
        Dtype::I32 => conv(bytes, |b| i32::from_le_bytes(b) as f32),
        Dtype::U32 => conv(bytes, |b| u32::from_le_bytes(b) as f32),
        Dtype::I16 => conv(bytes, |b| i16::from_le_bytes(b) as f32),
        Dtype::U16 => conv(bytes, |b| u16::from_le_bytes(b) as f32),
        Dtype::I8 => conv(bytes, |b: [u8; 1]| b[0] as i8 as f32),
        Dtype::U8 | Dtype::BOOL => conv(bytes, |b: [u8; 1]| b[0] as f32),
        _ => return None,
    })
}

/// The first key that appears twice at the top level of a JSON object (`None` when every key is
/// unique or the bytes are not an object). JSON parsers keep the last of two equal keys, so a
/// duplicated tensor name would silently hide a tensor: it must be found before that.
fn first_duplicate_key(json: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct FirstDuplicate;
    impl<'de> Visitor<'de> for FirstDuplicate {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
            // The whole map is read (serde_json checks that a visitor consumed all of it).
            let (mut seen, mut first) = (std::collections::HashSet::new(), None);
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if first.is_none() && !seen.insert(key.clone()) {
                    first = Some(key);
                }
            }
            Ok(first)
        }
    }
    serde_json::Deserializer::from_slice(json).deserialize_map(FirstDuplicate).ok().flatten()
}

/// A safetensors file's bytes holding `tensors` (name, shape, values) as F32, in the order given
/// (the format sorts nothing; readers look tensors up by name). The values of each must fill its
/// shape.
pub fn serialize_f32(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<u8>, SafetensorsError> {
    let invalid = |reason: String| SafetensorsError::Invalid { path: PathBuf::from("(being written)"), reason };
    let views = tensors
        .iter()
        .map(|(name, shape, values)| {
            let n: usize = shape.iter().product();
            if n != values.len() {
                return Err(invalid(format!("{name}: {} values for shape {shape:?}", values.len())));
            }
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(values)).map(|v| (name.clone(), v)).map_err(|e| invalid(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, None).map_err(|e| invalid(e.to_string()))
}

/// Writes a safetensors file of F32 tensors `(name, shape, values)` and a `__metadata__` map to
/// `w` without building it in memory first (checkpoints of a few GB): the header (JSON, padded
/// with spaces to a multiple of 8 bytes, after its little-endian u64 length), then each tensor's
/// bytes in the order given.
pub fn write_f32(w: &mut impl std::io::Write, tensors: &[(&str, &[usize], &[f32])], metadata: &[(String, String)]) -> Result<(), SafetensorsError> {
    let invalid = |reason: String| SafetensorsError::Invalid { path: PathBuf::from("(being written)"), reason };
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), metadata.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect::<serde_json::Map<_, _>>().into());
    }
    let mut offset = 0usize;
    for (name, shape, values) in tensors {
        if shape.iter().product::<usize>() != values.len() {
            return Err(invalid(format!("{name}: {} values for shape {shape:?}", values.len())));
        }
        if header.contains_key(*name) {
            return Err(invalid(format!("{name} appears twice")));
        }
        let end = offset + 4 * values.len();
        header.insert(name.to_string(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}));
        offset = end;
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| invalid(e.to_string()))?;
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let io = |e: std::io::Error| SafetensorsError::Io { path: PathBuf::from("(being written)"), source: e };
    w.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&json).map_err(io)?;
    for (_, _, values) in tensors {
        for chunk in values.chunks(1 << 16) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.write_all(&bytes).map_err(io)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `serialize_f32` writes, the `safetensors` crate's parser reads back: names, shapes,
    /// values; a shape the values do not fill is refused.
    #[test]
    fn f32_tensors_round_trip() {
        let ts = vec![("b.weight".to_string(), vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-8, 7.0]), ("a.bias".to_string(), vec![2], vec![0.5, -0.25])];
        let f = SafetensorsFile::from_bytes(serialize_f32(&ts).unwrap(), "written").unwrap();
        for (name, shape, values) in &ts {
            assert_eq!(&f.get(name).unwrap().shape, shape);
            assert_eq!(&f.tensor_f32(name, Some(shape)).unwrap(), values);
        }
        assert!(serialize_f32(&[("x".into(), vec![3], vec![1.0])]).is_err());
        // The streaming writer: the same tensors and a metadata map, read by the crate's parser.
        let mut buf = Vec::new();
        let views: Vec<(&str, &[usize], &[f32])> = ts.iter().map(|(n, s, v)| (n.as_str(), s.as_slice(), v.as_slice())).collect();
        write_f32(&mut buf, &views, &[("step".into(), "12".into())]).unwrap();
        let f = SafetensorsFile::from_bytes(buf, "streamed").unwrap();
        assert_eq!(f.metadata, vec![("step".to_string(), "12".to_string())]);
        for (name, shape, values) in &ts {
            assert_eq!(&f.tensor_f32(name, Some(shape)).unwrap(), values);
        }
        assert!(write_f32(&mut Vec::new(), &[("x", &[3], &[1.0])], &[]).is_err());
    }
}
