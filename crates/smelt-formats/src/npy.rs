//! NPY arrays (numpy's `.npy`, format versions 1.0-3.0): little-endian, C order.
//! Used for `--npy` outputs and for tensors exchanged with Flower (which ships NPY bytes).
//!
//! Layout: `\x93NUMPY`, major, minor, header length (u16 for v1, u32 for v2+), a Python dict
//! literal `{'descr': '<f4', 'fortran_order': False, 'shape': (n, m), }` padded with spaces
//! and a newline so that the data starts at a multiple of 64 bytes, then the raw elements.

use std::io::Write;

use crate::error::NpyError;

/// Element data of an array.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    F16(Vec<half::f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
}

impl NpyData {
    fn descr(&self) -> &'static str {
        match self {
            NpyData::F16(_) => "<f2",
            NpyData::F32(_) => "<f4",
            NpyData::F64(_) => "<f8",
            NpyData::I64(_) => "<i8",
            NpyData::I32(_) => "<i4",
            NpyData::I8(_) => "|i1",
            NpyData::U8(_) => "|u1",
        }
    }

    pub fn len(&self) -> usize {
        match self {
            NpyData::F16(v) => v.len(),
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
            NpyData::I64(v) => v.len(),
            NpyData::I32(v) => v.len(),
            NpyData::I8(v) => v.len(),
            NpyData::U8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as f32 (rounded for f64 and wide integers).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            NpyData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            NpyData::F32(v) => v.clone(),
            NpyData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I8(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U8(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
}

impl NpyData {
    /// The elements as f64 (exact for every type but the widest integers).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            NpyData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            NpyData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::F64(v) => v.clone(),
            NpyData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::I8(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::U8(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }
}

/// An n-dimensional array.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

const MAGIC: &[u8; 6] = b"\x93NUMPY";

fn field<'a>(header: &'a str, key: &str) -> Result<&'a str, NpyError> {
    let k = format!("'{key}'");
    let at = header.find(&k).ok_or_else(|| NpyError::Invalid(format!("header has no {k}")))?;
    let rest = header[at + k.len()..].trim_start();
    rest.strip_prefix(':').map(str::trim_start).ok_or_else(|| NpyError::Invalid(format!("no ':' after {k}")))
}

/// Parses an NPY file held in memory.
pub fn read_npy(bytes: &[u8]) -> Result<NpyArray, NpyError> {
    let bad = |m: &str| NpyError::Invalid(m.to_string());
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("not an NPY file (bad magic)"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(NpyError::Invalid(format!("unsupported NPY version {v}"))),
    };
    let header = bytes.get(start..start.saturating_add(header_len)).ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not UTF-8"))?;
    let descr = field(header, "descr")?;
    let descr = descr.get(1..4).filter(|_| descr.starts_with('\'')).ok_or_else(|| bad("bad descr"))?;
    if field(header, "fortran_order")?.starts_with("True") {
        return Err(bad("Fortran-order arrays are not supported; save with np.ascontiguousarray"));
    }
    let shape_s = field(header, "shape")?;
    let shape_s = shape_s.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or_else(|| bad("bad shape"))?;
    let shape = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| NpyError::Invalid(format!("bad shape entry {s:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("shape overflows"))?;
    let body = &bytes[start + header_len..];
    let item = match descr {
        "<f2" => 2,
        "<f4" | "<i4" => 4,
        "<f8" | "<i8" => 8,
        "|u1" | "<u1" | "|i1" | "<i1" => 1,
        d => return Err(NpyError::Invalid(format!("dtype {d} not supported (f2, f4, f8, i1, i4, i8, u1 are)"))),
    };
    if n.checked_mul(item) != Some(body.len()) {
        return Err(NpyError::Invalid(format!("shape {shape:?} needs {} bytes of data, file has {}", n.saturating_mul(item), body.len())));
    }
    fn conv<const N: usize, T>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        b.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect()
    }
    let data = match descr {
        "<f2" => NpyData::F16(conv(body, |b| half::f16::from_bits(u16::from_le_bytes(b)))),
        "<f4" => NpyData::F32(conv(body, f32::from_le_bytes)),
        "<f8" => NpyData::F64(conv(body, f64::from_le_bytes)),
        "<i4" => NpyData::I32(conv(body, i32::from_le_bytes)),
        "<i8" => NpyData::I64(conv(body, i64::from_le_bytes)),
        "|i1" | "<i1" => NpyData::I8(body.iter().map(|&b| b as i8).collect()),
        _ => NpyData::U8(body.to_vec()),
    };
    Ok(NpyArray { shape, data })
}

/// Writes `array` as NPY version 1.0.
pub fn write_npy<W: Write + ?Sized>(w: &mut W, array: &NpyArray) -> std::io::Result<()> {
    let n: usize = array.shape.iter().product();
    if n != array.data.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("shape {:?} does not match {} elements", array.shape, array.data.len())));
    }
    let dims: Vec<String> = array.shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", array.data.descr(), shape);
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
    header.push('\n');
    w.write_all(MAGIC)?;
    w.write_all(&[1, 0])?;
    w.write_all(&(header.len() as u16).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    macro_rules! body {
        ($v:expr) => {
            for x in $v {
                w.write_all(&x.to_le_bytes())?;
            }
        };
    }
    match &array.data {
        NpyData::F16(v) => body!(v),
        NpyData::F32(v) => body!(v),
        NpyData::F64(v) => body!(v),
        NpyData::I64(v) => body!(v),
        NpyData::I32(v) => body!(v),
        NpyData::I8(v) => body!(v),
        NpyData::U8(v) => w.write_all(v)?,
    }
    Ok(())
}

/// [`write_npy`] into a new buffer.
pub fn to_npy_bytes(array: &NpyArray) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    write_npy(&mut v, array)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_header_alignment() {
        let a = NpyArray { shape: vec![2, 3], data: NpyData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5]) };
        let bytes = to_npy_bytes(&a).unwrap();
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        assert_eq!(read_npy(&bytes).unwrap(), a);
        let v = NpyArray { shape: vec![4], data: NpyData::I64(vec![1, -2, 3, 1 << 40]) };
        assert_eq!(read_npy(&to_npy_bytes(&v).unwrap()).unwrap(), v);
        let h = NpyArray { shape: vec![2], data: NpyData::F16(vec![half::f16::from_f32(0.5), half::f16::from_f32(-3.0)]) };
        assert_eq!(read_npy(&to_npy_bytes(&h).unwrap()).unwrap(), h);
        let i = NpyArray { shape: vec![3], data: NpyData::I8(vec![-128, 0, 127]) };
        assert_eq!(read_npy(&to_npy_bytes(&i).unwrap()).unwrap(), i);
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        let good = to_npy_bytes(&NpyArray { shape: vec![3], data: NpyData::F32(vec![1.0; 3]) }).unwrap();
        for cut in 0..good.len() {
            assert!(read_npy(&good[..cut]).is_err(), "truncated at {cut}");
        }
        let mut big = good.clone();
        let s = String::from_utf8_lossy(&big[10..]).replace("(3,)", "(9,)");
        big.truncate(10);
        big.extend_from_slice(s.as_bytes());
        assert!(read_npy(&big).is_err());
    }
}
