//! NumPy's `.npy` format for the tensors Flower sends (`tensor_type = "numpy.ndarray"`: each
//! tensor is the bytes `numpy.save(..., allow_pickle=False)` writes).
//!
//! Layout: the magic `\x93NUMPY`, a major and minor version byte, the header length (u16 little
//! endian for version 1, u32 for versions 2 and 3), the header (a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (4, 384), }`, space-padded and ended by a
//! newline so that the data starts at a multiple of 64 bytes), then the elements in C order.
//!
//! Only what model parameters need is read: little-endian `f4` or `f8` (converted to f32), C
//! order. Anything else (pickled objects, big-endian, integers, Fortran order) is refused; the
//! element count must match the bytes exactly, and it is bounded by the caller before anything is
//! allocated.

use crate::FedError;

const MAGIC: &[u8] = b"\x93NUMPY";

/// A decoded tensor: its shape (empty for a scalar) and its elements in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }
}

/// The `.npy` bytes (version 1.0, `<f4`, C order) of `t`.
pub fn encode(t: &Tensor) -> Vec<u8> {
    let shape = match t.shape.as_slice() {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        dims => format!("({})", dims.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' ends on a multiple of 64.
    let used = MAGIC.len() + 4 + header.len() + 1;
    header.extend(std::iter::repeat_n(' ', used.next_multiple_of(64) - used));
    header.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + 4 * t.data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &t.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Reads one `.npy` tensor of at most `max_elements` elements.
pub fn decode(bytes: &[u8], max_elements: usize) -> Result<Tensor, FedError> {
    let bad = |why: String| FedError::Npy(why);
    if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad("not NPY data (no \\x93NUMPY magic)".into()));
    }
    let (major, rest) = (bytes[6], &bytes[8..]);
    let (len, rest) = match major {
        1 => (u16::from_le_bytes([rest[0], rest[1]]) as usize, &rest[2..]),
        2 | 3 if rest.len() >= 4 => (u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize, &rest[4..]),
        _ => return Err(bad(format!("NPY version {major} is not one this client reads (1, 2 or 3)"))),
    };
    if len > rest.len() || len > 64 * 1024 {
        return Err(bad(format!("the header says {len} bytes, {} remain", rest.len())));
    }
    let header = std::str::from_utf8(&rest[..len]).map_err(|_| bad("the header is not text".into()))?;
    let data = &rest[len..];
    let descr = field(header, "descr").ok_or_else(|| bad(format!("no 'descr' in the header {header:?}")))?;
    let width = match descr.trim_matches(|c| c == '\'' || c == '"') {
        "<f4" => 4,
        "<f8" => 8,
        other => return Err(bad(format!("element type {other:?}: only little-endian float32 ('<f4') or float64 ('<f8') parameters are accepted"))),
    };
    match field(header, "fortran_order") {
        Some("False") => {}
        Some(_) => return Err(bad("Fortran-ordered arrays are not accepted".into())),
        None => return Err(bad(format!("no 'fortran_order' in the header {header:?}"))),
    }
    let shape = parse_shape(field(header, "shape").ok_or_else(|| bad(format!("no 'shape' in the header {header:?}")))?).ok_or_else(|| bad(format!("unreadable shape in {header:?}")))?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&n| n <= max_elements);
    let count = count.ok_or_else(|| bad(format!("shape {shape:?} is larger than the {max_elements} elements allowed")))?;
    if data.len() != count * width {
        return Err(bad(format!("shape {shape:?} needs {} bytes of data, there are {}", count * width, data.len())));
    }
    let values = if width == 4 {
        data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    } else {
        data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
    };
    Ok(Tensor { shape, data: values })
}

/// The value text of `key` in a header dict literal: up to the next top-level comma or brace.
fn field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[at + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find([',', '}'])? };
    Some(rest[..end].trim())
}

/// `()`, `(5,)`, `(4, 384)` -> dimensions.
fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    inner.split(',').map(str::trim).filter(|p| !p.is_empty()).map(|p| p.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_and_is_aligned() {
        for shape in [vec![], vec![3], vec![2, 3], vec![1, 0]] {
            let n = shape.iter().product();
            let t = Tensor::new(shape, (0..n).map(|i| i as f32 * 0.5 - 1.0).collect());
            let b = encode(&t);
            assert_eq!((b.len() - 4 * n) % 64, 0);
            assert_eq!(decode(&b, 100).unwrap(), t);
        }
    }

    #[test]
    fn hostile_headers_are_refused() {
        let good = encode(&Tensor::new(vec![2, 2], vec![1.0; 4]));
        assert!(decode(&good[..good.len() - 1], 100).is_err(), "truncated data");
        assert!(decode(&good, 3).is_err(), "over the element limit");
        assert!(decode(&good[..5], 100).is_err());
        let swap = |from: &str, to: &str| {
            let s = String::from_utf8_lossy(&good[10..good.len() - 16]).replace(from, to);
            let mut b = good[..8].to_vec();
            b.extend_from_slice(&(s.len() as u16).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
            b.extend_from_slice(&good[good.len() - 16..]);
            b
        };
        assert!(decode(&swap("<f4", "|O"), 100).is_err(), "pickled objects");
        assert!(decode(&swap("<f4", ">f4"), 100).is_err(), "big-endian");
        assert!(decode(&swap("False", "True"), 100).is_err(), "Fortran order");
        assert!(decode(&swap("(2, 2)", "(99999999999, 99999999999)"), usize::MAX).is_err(), "overflowing shape");
        assert!(decode(&swap("(2, 2)", "(2, x)"), 100).is_err());
        assert_eq!(decode(&swap(" ", " "), 100).unwrap().shape, vec![2, 2]);
    }
}
