//! Streaming GGUF writer: the header and all tensor infos first (offsets follow from the types
//! and shapes), then each tensor's bytes in order, each padded with zeros to the alignment, as
//! ggml's `gguf_write_to_buf` lays files out.

use std::io::Write;

use crate::error::GgufError;
use crate::quant::GgmlType;

use super::value::{GgufArray, GgufValue, Metadata};
use super::{TensorInfo, DEFAULT_ALIGNMENT, MAX_DIMS};

/// A tensor to be written.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    /// ggml order (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorSpec {
    pub fn from_info(t: &TensorInfo) -> Self {
        TensorSpec { name: t.name.clone(), dims: t.dims.clone(), ty: t.ty }
    }

    /// Bytes of data, or why this spec cannot be written.
    pub fn n_bytes(&self) -> Result<u64, GgufError> {
        let bad = |reason: String| GgufError::BadTensor { name: self.name.clone(), reason };
        if self.dims.len() > MAX_DIMS as usize {
            return Err(bad(format!("{} dimensions (max {MAX_DIMS})", self.dims.len())));
        }
        let n = self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("element count overflows".into()))?;
        let ne0 = self.dims.first().copied().unwrap_or(1);
        if ne0 % self.ty.block_elems() as u64 != 0 {
            return Err(bad(format!("row length {ne0} is not a multiple of {}'s block size {}", self.ty, self.ty.block_elems())));
        }
        self.ty.bytes_for(n).ok_or_else(|| bad("byte count overflows".into()))
    }
}

/// Writes a GGUF file to `out`: construct with the metadata and tensor list (writes the header),
/// then call [`GgufWriter::write_tensor`] once per tensor in order, then [`GgufWriter::finish`].
pub struct GgufWriter<W: Write> {
    out: W,
    sizes: Vec<(String, u64)>,
    next: usize,
    alignment: u64,
}

fn put_str<W: Write>(w: &mut W, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn put_array<W: Write>(w: &mut W, a: &GgufArray) -> std::io::Result<()> {
    w.write_all(&a.elem_type_id().to_le_bytes())?;
    w.write_all(&(a.len() as u64).to_le_bytes())?;
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                w.write_all(&x.to_le_bytes())?;
            }
        };
    }
    match a {
        GgufArray::U8(v) => w.write_all(v)?,
        GgufArray::I8(v) => each!(v),
        GgufArray::U16(v) => each!(v),
        GgufArray::I16(v) => each!(v),
        GgufArray::U32(v) => each!(v),
        GgufArray::I32(v) => each!(v),
        GgufArray::F32(v) => each!(v),
        GgufArray::U64(v) => each!(v),
        GgufArray::I64(v) => each!(v),
        GgufArray::F64(v) => each!(v),
        GgufArray::Bool(v) => {
            for &b in v {
                w.write_all(&[b as u8])?;
            }
        }
        GgufArray::String(v) => {
            for s in v {
                put_str(w, s)?;
            }
        }
        GgufArray::Array(v) => {
            for inner in v {
                put_array(w, inner)?;
            }
        }
    }
    Ok(())
}

fn put_value<W: Write>(w: &mut W, v: &GgufValue) -> std::io::Result<()> {
    w.write_all(&v.type_id().to_le_bytes())?;
    match v {
        GgufValue::U8(x) => w.write_all(&[*x]),
        GgufValue::I8(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::U16(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I16(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::U32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::F32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::Bool(x) => w.write_all(&[*x as u8]),
        GgufValue::String(s) => put_str(w, s),
        GgufValue::Array(a) => put_array(w, a),
        GgufValue::U64(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I64(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::F64(x) => w.write_all(&x.to_le_bytes()),
    }
}

/// Counts bytes passing through, so that padding can be computed without `Seek`.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn io_err(e: std::io::Error) -> GgufError {
    GgufError::Write { path: "<stream>".into(), source: e }
}

fn pad<W: Write>(w: &mut W, written: u64, alignment: u64) -> std::io::Result<u64> {
    let padded = written.div_ceil(alignment) * alignment;
    const ZEROS: [u8; 64] = [0; 64];
    let mut left = padded - written;
    while left > 0 {
        let k = left.min(64);
        w.write_all(&ZEROS[..k as usize])?;
        left -= k;
    }
    Ok(padded)
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header, the metadata and all tensor infos. The alignment is taken from
    /// `general.alignment` when present (it must be a u32 power of two).
    pub fn new(out: W, version: u32, metadata: &Metadata, tensors: Vec<TensorSpec>) -> Result<Self, GgufError> {
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { version });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(GgufValue::U32(a)) if a.is_power_of_two() => *a as u64,
            Some(v) => return Err(GgufError::BadAlignment { value: v.render(20) }),
        };
        let mut names = std::collections::HashSet::new();
        let mut sizes = Vec::with_capacity(tensors.len());
        for t in &tensors {
            if !names.insert(t.name.as_str()) {
                return Err(GgufError::BadTensor { name: t.name.clone(), reason: "duplicate name".into() });
            }
            sizes.push((t.name.clone(), t.n_bytes()?));
        }
        let mut w = Counting { inner: out, n: 0 };
        (|| -> std::io::Result<()> {
            w.write_all(b"GGUF")?;
            w.write_all(&version.to_le_bytes())?;
            w.write_all(&(tensors.len() as u64).to_le_bytes())?;
            w.write_all(&(metadata.len() as u64).to_le_bytes())?;
            for (k, v) in metadata.iter() {
                put_str(&mut w, k)?;
                put_value(&mut w, v)?;
            }
            let mut offset = 0u64;
            for (t, (_, size)) in tensors.iter().zip(&sizes) {
                put_str(&mut w, &t.name)?;
                w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
                for d in &t.dims {
                    w.write_all(&d.to_le_bytes())?;
                }
                w.write_all(&(t.ty as u32).to_le_bytes())?;
                w.write_all(&offset.to_le_bytes())?;
                offset = (offset + size).div_ceil(alignment) * alignment;
            }
            let n = w.n;
            pad(&mut w, n, alignment)?;
            Ok(())
        })()
        .map_err(io_err)?;
        Ok(GgufWriter { out: w.inner, sizes, next: 0, alignment })
    }

    /// Writes the next tensor's bytes (in the order given to [`GgufWriter::new`]) and its padding.
    pub fn write_tensor(&mut self, data: &[u8]) -> Result<(), GgufError> {
        let (name, size) = self.sizes.get(self.next).cloned().ok_or_else(|| GgufError::BadTensor {
            name: "<extra>".into(),
            reason: format!("all {} tensors were already written", self.sizes.len()),
        })?;
        if data.len() as u64 != size {
            return Err(GgufError::BadTensor { name, reason: format!("expected {size} bytes of data, got {}", data.len()) });
        }
        self.out.write_all(data).map_err(io_err)?;
        pad(&mut self.out, size, self.alignment).map_err(io_err)?;
        self.next += 1;
        Ok(())
    }

    /// Name of the tensor whose data is expected next.
    pub fn next_tensor(&self) -> Option<&str> {
        self.sizes.get(self.next).map(|(n, _)| n.as_str())
    }

    /// Checks that every tensor was written, flushes, and returns the sink.
    pub fn finish(mut self) -> Result<W, GgufError> {
        if self.next != self.sizes.len() {
            let name = self.sizes[self.next].0.clone();
            return Err(GgufError::BadTensor { name, reason: format!("only {} of {} tensors were written", self.next, self.sizes.len()) });
        }
        self.out.flush().map_err(io_err)?;
        Ok(self.out)
    }
}
