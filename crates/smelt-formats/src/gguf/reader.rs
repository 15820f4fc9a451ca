//! GGUF parser over a byte slice. Every read is bounds-checked, every count is checked against
//! the bytes that remain before anything is allocated, and every failure names the field and
//! its byte offset. Nothing here panics on any input (see `fuzz/fuzz_targets/gguf.rs`).
//!
//! Layout (all little-endian):
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count x  { key: string, value_type: u32, value }
//! tensor_count x { name: string, n_dims: u32, dims: u64 x n_dims, type: u32, offset: u64 }
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset
//! string = len: u64, bytes (UTF-8, no terminator); array = elem_type: u32, count: u64, elems
//! ```

use crate::error::GgufError;
use crate::quant::GgmlType;

use super::value::{type_id, GgufArray, GgufValue, Metadata};
use super::{GgufHeader, TensorInfo, DEFAULT_ALIGNMENT, MAX_DIMS};

/// Arrays nested deeper than this are refused (bounds recursion on hostile input).
const MAX_ARRAY_DEPTH: usize = 8;

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.data.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated { field: field(), offset: self.pos as u64, needed: n, available: self.remaining() });
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn string(&mut self, field: &dyn Fn() -> String) -> Result<String, GgufError> {
        let offset = self.pos as u64;
        let len = self.u64(&|| format!("{} (string length)", field()))?;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| GgufError::InvalidUtf8 { field: field(), offset, valid_up_to: e.utf8_error().valid_up_to() })
    }

    /// Checks that `count` elements of at least `min_size` bytes each can fit in what remains.
    fn check_count(&self, count: u64, min_size: u64, field: &dyn Fn() -> String, at: usize) -> Result<usize, GgufError> {
        let need = count.checked_mul(min_size.max(1));
        match need {
            Some(need) if need <= self.remaining() => Ok(count as usize),
            _ => Err(GgufError::ImpossibleCount { field: field(), offset: at as u64, count, available: self.remaining() }),
        }
    }
}

/// Smallest encoded size of one element of `ty` (strings: the length field; arrays: type +
/// count), used to refuse impossible counts before allocating.
fn min_elem_size(ty: u32) -> u64 {
    match ty {
        type_id::U8 | type_id::I8 | type_id::BOOL => 1,
        type_id::U16 | type_id::I16 => 2,
        type_id::U32 | type_id::I32 | type_id::F32 => 4,
        type_id::STRING | type_id::U64 | type_id::I64 | type_id::F64 => 8,
        type_id::ARRAY => 12,
        _ => 1,
    }
}

fn read_value(c: &mut Cursor, ty: u32, key: &str, depth: usize) -> Result<GgufValue, GgufError> {
    let at = c.pos as u64;
    let f = || format!("value of {key:?}");
    Ok(match ty {
        type_id::U8 => GgufValue::U8(c.array::<1>(&f)?[0]),
        type_id::I8 => GgufValue::I8(c.array::<1>(&f)?[0] as i8),
        type_id::U16 => GgufValue::U16(u16::from_le_bytes(c.array(&f)?)),
        type_id::I16 => GgufValue::I16(i16::from_le_bytes(c.array(&f)?)),
        type_id::U32 => GgufValue::U32(c.u32(&f)?),
        type_id::I32 => GgufValue::I32(i32::from_le_bytes(c.array(&f)?)),
        type_id::F32 => GgufValue::F32(f32::from_le_bytes(c.array(&f)?)),
        type_id::BOOL => GgufValue::Bool(read_bool(c, key)?),
        type_id::STRING => GgufValue::String(c.string(&f)?),
        type_id::ARRAY => GgufValue::Array(read_array(c, key, depth + 1)?),
        type_id::U64 => GgufValue::U64(c.u64(&f)?),
        type_id::I64 => GgufValue::I64(i64::from_le_bytes(c.array(&f)?)),
        type_id::F64 => GgufValue::F64(f64::from_le_bytes(c.array(&f)?)),
        other => return Err(GgufError::UnknownValueType { key: key.to_string(), offset: at, type_id: other }),
    })
}

fn read_bool(c: &mut Cursor, key: &str) -> Result<bool, GgufError> {
    let at = c.pos as u64;
    match c.array::<1>(&|| format!("value of {key:?}"))?[0] {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(GgufError::InvalidBool { key: key.to_string(), offset: at, value: v }),
    }
}

fn read_array(c: &mut Cursor, key: &str, depth: usize) -> Result<GgufArray, GgufError> {
    let at = c.pos;
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::ArrayTooDeep { key: key.to_string(), offset: at as u64, max: MAX_ARRAY_DEPTH });
    }
    let f = || format!("array {key:?}");
    let ty = c.u32(&f)?;
    let count = c.u64(&f)?;
    let n = c.check_count(count, min_elem_size(ty), &f, at)?;
    macro_rules! nums {
        ($variant:ident, $t:ty) => {{
            let bytes = c.take(n as u64 * std::mem::size_of::<$t>() as u64, &f)?;
            GgufArray::$variant(bytes.chunks_exact(std::mem::size_of::<$t>()).map(|b| <$t>::from_le_bytes(b.try_into().unwrap_or_default())).collect())
        }};
    }
    Ok(match ty {
        type_id::U8 => GgufArray::U8(c.take(n as u64, &f)?.to_vec()),
        type_id::I8 => GgufArray::I8(c.take(n as u64, &f)?.iter().map(|&b| b as i8).collect()),
        type_id::U16 => nums!(U16, u16),
        type_id::I16 => nums!(I16, i16),
        type_id::U32 => nums!(U32, u32),
        type_id::I32 => nums!(I32, i32),
        type_id::F32 => nums!(F32, f32),
        type_id::U64 => nums!(U64, u64),
        type_id::I64 => nums!(I64, i64),
        type_id::F64 => nums!(F64, f64),
        type_id::BOOL => GgufArray::Bool((0..n).map(|_| read_bool(c, key)).collect::<Result<_, _>>()?),
        type_id::STRING => GgufArray::String((0..n).map(|_| c.string(&f)).collect::<Result<_, _>>()?),
        type_id::ARRAY => GgufArray::Array((0..n).map(|_| read_array(c, key, depth + 1)).collect::<Result<_, _>>()?),
        other => return Err(GgufError::UnknownValueType { key: key.to_string(), offset: at as u64, type_id: other }),
    })
}

/// Parses and validates the header, metadata and tensor infos of a GGUF file held in `data`
/// (the whole file: tensor data bounds are checked against its length).
pub fn parse(data: &[u8]) -> Result<GgufHeader, GgufError> {
    let mut c = Cursor { data, pos: 0 };
    let magic: [u8; 4] = c.array(&|| "magic".into())?;
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = c.u32(&|| "version".into())?;
    if version != 2 && version != 3 {
        let swapped = version.swap_bytes();
        if swapped == 2 || swapped == 3 {
            return Err(GgufError::BigEndian { swapped });
        }
        return Err(GgufError::UnsupportedVersion { version });
    }
    let tensor_count = c.u64(&|| "tensor count".into())?;
    let kv_count = c.u64(&|| "metadata count".into())?;

    // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes.
    let n_kv = c.check_count(kv_count, 13, &|| "metadata count".into(), 16)?;
    let mut metadata = Metadata::new();
    for i in 0..n_kv {
        let at = c.pos as u64;
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let ty = c.u32(&|| format!("type of {key:?}"))?;
        let value = read_value(&mut c, ty, &key, 0)?;
        if !metadata.insert_new(key.clone(), value) {
            return Err(GgufError::DuplicateKey { key, offset: at });
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(GgufValue::U32(a)) if a.is_power_of_two() => *a as u64,
        Some(v) => return Err(GgufError::BadAlignment { value: format!("{} ({})", v.render(20), v.type_name()) }),
    };

    // A tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
    let n_tensors = c.check_count(tensor_count, 24, &|| "tensor count".into(), 8)?;
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut names = std::collections::HashSet::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let info_offset = c.pos as u64;
        let name = c.string(&|| format!("name of tensor #{i}"))?;
        let f = || format!("tensor {name:?}");
        let n_dims = c.u32(&f)?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims { name, offset: info_offset, n_dims, max: MAX_DIMS });
        }
        let dims = (0..n_dims).map(|_| c.u64(&f)).collect::<Result<Vec<_>, _>>()?;
        let type_id = c.u32(&f)?;
        let offset = c.u64(&f)?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType { name: name.clone(), offset: info_offset, type_id })?;
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64 && dims.iter().all(|&d| d <= i64::MAX as u64))
            .ok_or_else(|| GgufError::ShapeOverflow { name: name.clone(), offset: info_offset, dims: dims.clone() })?;
        let ne0 = dims.first().copied().unwrap_or(1);
        if ne0 % ty.block_elems() as u64 != 0 {
            return Err(GgufError::RowNotBlockMultiple { name, offset: info_offset, ty, ne0, block: ty.block_elems() });
        }
        let n_bytes = ty
            .bytes_for(n_elements)
            .ok_or_else(|| GgufError::ShapeOverflow { name: name.clone(), offset: info_offset, dims: dims.clone() })?;
        if offset % alignment != 0 {
            return Err(GgufError::Misaligned { name, data_offset: offset, alignment });
        }
        if !names.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor { name, offset: info_offset });
        }
        tensors.push(TensorInfo { name, dims, ty, offset, n_elements, n_bytes, info_offset });
    }

    let end_of_infos = c.pos as u64;
    let data_offset = end_of_infos.div_ceil(alignment) * alignment;
    let file_len = data.len() as u64;
    for t in &tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(_), Some(end)) if end <= file_len => {}
            _ => {
                return Err(GgufError::DataOutOfBounds {
                    name: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                })
            }
        }
    }
    check_disjoint(&tensors)?;
    Ok(GgufHeader { version, metadata, tensors, alignment, data_offset, file_len })
}

/// Every tensor's bytes `[offset, offset + n_bytes)` (its exact size for its type and shape)
/// must be disjoint from every other's: a tensor moved onto another, or one whose type was
/// changed so that its data runs over the next, is refused rather than read as garbage.
/// Tensors of zero bytes overlap nothing.
fn check_disjoint(tensors: &[TensorInfo]) -> Result<(), GgufError> {
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        // Offsets and sizes were checked against the file length, so the sum cannot overflow.
        if a.offset + a.n_bytes > b.offset {
            return Err(GgufError::OverlappingTensors {
                first: a.name.clone(),
                first_range: (a.offset, a.offset + a.n_bytes),
                ty: a.ty,
                second: b.name.clone(),
                second_start: b.offset,
            });
        }
    }
    Ok(())
}
