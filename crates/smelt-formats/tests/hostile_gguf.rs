//! Hostile and broken GGUF files: every one gets a typed error naming the field and offset, never
//! a panic, never an allocation bigger than the file.

use smelt_formats::gguf::parse;
use smelt_formats::GgufError;

/// Builds raw GGUF bytes field by field (the writer refuses invalid files, so tests need this).
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn header(n_tensors: u64, n_kv: u64) -> Self {
        Raw::default().bytes(b"GGUF").u32(3).u64(n_tensors).u64(n_kv)
    }
    /// A tensor info: name, dims, type id, offset.
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        let mut r = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    /// Pads to 32 and appends `n` data bytes.
    fn data(mut self, n: usize) -> Self {
        while !self.0.len().is_multiple_of(32) {
            self.0.push(0);
        }
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

/// A small valid file: one u32 key, one string-array key, one F32 [4, 2] tensor.
fn valid() -> Vec<u8> {
    Raw::header(1, 2)
        .str("general.architecture")
        .u32(8)
        .str("llama")
        .str("tokens")
        .u32(9)
        .u32(8)
        .u64(2)
        .str("a")
        .str("bc")
        .tensor("w", &[4, 2], 0, 0)
        .data(32)
        .0
}

#[test]
fn the_valid_file_parses() {
    let h = parse(&valid()).unwrap();
    assert_eq!(h.tensors[0].n_bytes, 32);
    assert_eq!(h.metadata.len(), 2);
}

#[test]
fn every_truncation_is_an_error() {
    let v = valid();
    for cut in 0..v.len() {
        match parse(&v[..cut]) {
            Err(GgufError::Truncated { .. } | GgufError::DataOutOfBounds { .. } | GgufError::ImpossibleCount { .. }) => {}
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn every_single_byte_corruption_is_handled() {
    // Flip each byte in turn to a few values: parse must return (Ok or Err), never panic.
    let v = valid();
    for i in 0..v.len() {
        for x in [0x00, 0x01, 0x7f, 0x80, 0xff] {
            let mut c = v.clone();
            c[i] = x;
            let _ = parse(&c);
        }
    }
}

#[test]
fn bad_magic_version_and_endianness() {
    assert!(matches!(parse(b"GGML\x03\0\0\0"), Err(GgufError::BadMagic { found }) if &found == b"GGML"));
    let v1 = Raw::default().bytes(b"GGUF").u32(1).u64(0).u64(0).0;
    assert!(matches!(parse(&v1), Err(GgufError::UnsupportedVersion { version: 1 })));
    let be = Raw::default().bytes(b"GGUF").u32(3u32.swap_bytes()).u64(0).u64(0).0;
    assert!(matches!(parse(&be), Err(GgufError::BigEndian { swapped: 3 })));
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    let f = Raw::header(u64::MAX, 0).0;
    assert!(matches!(parse(&f), Err(GgufError::ImpossibleCount { count: u64::MAX, .. })));
    let f = Raw::header(0, 1 << 40).0;
    assert!(matches!(parse(&f), Err(GgufError::ImpossibleCount { .. })));
    // A key string claiming 2^63 bytes (its length field is at 24, its bytes would start at 32).
    let f = Raw::header(0, 1).u64(1 << 63).bytes(&[0; 16]).0;
    assert!(matches!(parse(&f), Err(GgufError::Truncated { needed, offset: 32, .. }) if needed == 1 << 63));
    // An array of 2^61 u64s.
    let f = Raw::header(0, 1).str("k").u32(9).u32(10).u64(1 << 61).0;
    match parse(&f) {
        Err(GgufError::ImpossibleCount { field, count, offset, .. }) => {
            assert_eq!((count, offset), (1 << 61, 24 + 9 + 4), "offset of the array (header 24, key 9, type 4)");
            assert!(field.contains("\"k\""), "{field}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn deeply_nested_arrays_are_refused() {
    let mut r = Raw::header(0, 1).str("deep").u32(9);
    for _ in 0..100 {
        r = r.u32(9).u64(1);
    }
    assert!(matches!(parse(&r.u32(0).u64(0).0), Err(GgufError::ArrayTooDeep { .. })));
}

#[test]
fn invalid_utf8_keys_and_names() {
    let f = Raw::header(0, 1).u64(2).bytes(&[0xff, 0xfe]).u32(4).u32(1).0;
    assert!(matches!(parse(&f), Err(GgufError::InvalidUtf8 { offset: 24, .. })));
    let f = Raw::header(1, 0).u64(1).bytes(&[0xc3]).u32(1).u64(32).u32(0).u64(0).data(128).0;
    assert!(matches!(parse(&f), Err(GgufError::InvalidUtf8 { .. })));
}

#[test]
fn bad_values() {
    let f = Raw::header(0, 1).str("b").u32(7).bytes(&[2]).0;
    assert!(matches!(parse(&f), Err(GgufError::InvalidBool { value: 2, .. })));
    let f = Raw::header(0, 1).str("x").u32(13).u32(0).0;
    assert!(matches!(parse(&f), Err(GgufError::UnknownValueType { type_id: 13, .. })));
    let f = Raw::header(0, 2).str("k").u32(4).u32(1).str("k").u32(4).u32(2).0;
    assert!(matches!(parse(&f), Err(GgufError::DuplicateKey { offset: 41, .. })));
    for (ty, val) in [(4u32, 0u32), (4, 48)] {
        let f = Raw::header(0, 1).str("general.alignment").u32(ty).u32(val).0;
        assert!(matches!(parse(&f), Err(GgufError::BadAlignment { .. })), "alignment {val}");
    }
    let f = Raw::header(0, 1).str("general.alignment").u32(5).u32(32).0;
    assert!(matches!(parse(&f), Err(GgufError::BadAlignment { .. })), "alignment stored as i32");
}

#[test]
fn impossible_tensors() {
    let info = 24u64; // header size: tensor infos start here when there is no metadata
    let one = |dims: &[u64], ty: u32, offset: u64, data: usize| parse(&Raw::header(1, 0).tensor("t", dims, ty, offset).data(data).0);
    assert!(matches!(one(&[1, 1, 1, 1, 1], 0, 0, 32), Err(GgufError::TooManyDims { n_dims: 5, offset, .. }) if offset == info));
    assert!(matches!(one(&[1 << 32, 1 << 32], 0, 0, 32), Err(GgufError::ShapeOverflow { .. })));
    assert!(matches!(one(&[u64::MAX], 0, 0, 32), Err(GgufError::ShapeOverflow { .. })));
    assert!(matches!(one(&[32], 4, 0, 32), Err(GgufError::UnknownTensorType { type_id: 4, .. })));
    assert!(matches!(one(&[33], 2, 0, 64), Err(GgufError::RowNotBlockMultiple { ne0: 33, block: 32, .. })));
    assert!(matches!(one(&[4], 0, 16, 64), Err(GgufError::Misaligned { data_offset: 16, .. })));
    assert!(matches!(one(&[64], 0, 0, 255), Err(GgufError::DataOutOfBounds { end, .. }) if end == 64 + 256));
    assert!(matches!(one(&[4], 0, u64::MAX - 31, 32), Err(GgufError::DataOutOfBounds { .. })));
    let dup = Raw::header(2, 0).tensor("t", &[8], 0, 0).tensor("t", &[8], 0, 32).data(64).0;
    assert!(matches!(parse(&dup), Err(GgufError::DuplicateTensor { .. })));
}

#[test]
fn errors_read_well() {
    let msg = parse(&Raw::header(1, 0).tensor("blk.0.w", &[33], 2, 0).data(64).0).unwrap_err().to_string();
    assert!(msg.contains("blk.0.w") && msg.contains("Q4_0") && msg.contains("33") && msg.contains("32"), "{msg}");
    let msg = parse(&valid()[..70]).unwrap_err().to_string();
    assert!(msg.contains("truncated") && msg.contains("byte"), "{msg}");
}

/// A small deterministic generator (xorshift64*), so that the generated cases are the same on
/// every run and a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// (type id, elements per block, bytes per block) of F32, F16, Q4_0, Q8_0.
const TYPES: [(u32, u64, u64); 4] = [(0, 1, 4), (1, 1, 2), (2, 32, 18), (8, 32, 34)];

/// A file of `n` tensors of random types and shapes, laid out one after another as ggml lays
/// them out (aligned to 32); returns the bytes and each tensor's (type index, dims, offset).
fn layout(rng: &mut Rng, n: usize) -> (Vec<(usize, Vec<u64>, u64)>, u64) {
    let mut at = 0u64;
    let mut ts = Vec::new();
    for _ in 0..n {
        let ti = rng.below(4) as usize;
        let (_, block, bytes) = TYPES[ti];
        let dims = vec![block * (1 + rng.below(4)), 1 + rng.below(3)];
        let size = dims[0] / block * bytes * dims[1];
        ts.push((ti, dims, at));
        at = (at + size).div_ceil(32) * 32;
    }
    (ts, at)
}

fn build(ts: &[(usize, Vec<u64>, u64)], data: u64) -> Vec<u8> {
    let mut r = Raw::header(ts.len() as u64, 0);
    for (i, (ti, dims, off)) in ts.iter().enumerate() {
        r = r.tensor(&format!("t{i}"), dims, TYPES[*ti].0, *off);
    }
    r.data(data as usize).0
}

#[test]
fn generated_layouts_parse_and_every_overlap_is_refused() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut moved, mut retyped) = (0, 0);
    for case in 0..400 {
        let n = 2 + rng.below(6) as usize;
        let (ts, data) = layout(&mut rng, n);
        let h = parse(&build(&ts, data)).unwrap_or_else(|e| panic!("case {case}: the valid layout fails: {e}"));
        assert_eq!(h.tensors.len(), n);

        // Move one tensor's offset into another's bytes (aligned, so only the overlap is wrong).
        let (a, b) = (rng.below(n as u64) as usize, rng.below(n as u64) as usize);
        if a != b {
            let mut m = ts.clone();
            let b_bytes = h.tensors[b].n_bytes;
            m[a].2 = ts[b].2 + (rng.below(b_bytes.div_ceil(32)) * 32).min(b_bytes.saturating_sub(1) / 32 * 32);
            match parse(&build(&m, data)) {
                Err(GgufError::OverlappingTensors { .. } | GgufError::DataOutOfBounds { .. }) => moved += 1,
                other => panic!("case {case}: t{a} moved onto t{b} was accepted: {other:?}"),
            }
        }

        // Retype a tensor to one with more bytes for the same shape: its data now runs over the
        // next tensor (or past the end).
        let i = rng.below(n as u64) as usize;
        let (ti, dims, _) = &ts[i];
        let bigger = (0..4).filter(|&t| dims[0] % TYPES[t].1 == 0 && dims[0] / TYPES[t].1 * TYPES[t].2 > dims[0] / TYPES[*ti].1 * TYPES[*ti].2);
        for t in bigger {
            let mut m = ts.clone();
            m[i].0 = t;
            let new_size = dims[0] / TYPES[t].1 * TYPES[t].2 * dims[1];
            let room = if i + 1 < n { ts[i + 1].2 - ts[i].2 } else { data - ts[i].2 };
            match parse(&build(&m, data)) {
                Err(GgufError::OverlappingTensors { .. } | GgufError::DataOutOfBounds { .. }) => retyped += 1,
                Ok(_) if new_size <= room => {} // still fits in the padding: nothing overlaps
                other => panic!("case {case}: t{i} retyped to {} was accepted: {other:?}", TYPES[t].0),
            }
        }
    }
    assert!(moved > 200 && retyped > 100, "too few overlapping cases generated: {moved} moved, {retyped} retyped");
}

#[test]
fn overlap_errors_name_both_tensors() {
    let f = Raw::header(2, 0).tensor("blk.0.attn_q.weight", &[32, 2], 0, 0).tensor("blk.0.attn_k.weight", &[32, 2], 0, 256).data(512).0;
    assert!(parse(&f).is_ok());
    let f = Raw::header(2, 0).tensor("blk.0.attn_q.weight", &[32, 2], 0, 0).tensor("blk.0.attn_k.weight", &[32, 2], 0, 224).data(512).0;
    let msg = parse(&f).unwrap_err().to_string();
    assert!(msg.contains("blk.0.attn_q.weight") && msg.contains("blk.0.attn_k.weight") && msg.contains("[0, 256)") && msg.contains("224"), "{msg}");
}
