//! The GGUF reader on arbitrary bytes: it must return Ok or a typed error, never panic, never
//! allocate beyond the input. Files it accepts must re-write, and writing what re-parses must
//! give the same bytes again (compared as bytes: float values may be NaN).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smelt_formats::gguf::{parse, GgufWriter, TensorSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(h) = parse(data) else { return };
    // Accepted: write it back (tensor data zero-filled to the sizes the header implies, capped so
    // that a tiny input cannot ask the fuzzer for gigabytes) and parse it again.
    let total: u64 = h.tensors.iter().map(|t| t.n_bytes).sum();
    if total > 1 << 20 {
        return;
    }
    let first = write(&h);
    let again = parse(&first).expect("our own output parses");
    assert_eq!(again.tensors.len(), h.tensors.len());
    for (a, b) in again.tensors.iter().zip(&h.tensors) {
        assert_eq!((&a.name, &a.dims, a.ty, a.n_bytes), (&b.name, &b.dims, b.ty, b.n_bytes));
    }
    assert!(write(&again) == first, "re-writing a parsed file changed its bytes");
});

/// Writes `h` with zero-filled tensor data.
fn write(h: &smelt_formats::GgufHeader) -> Vec<u8> {
    let specs: Vec<TensorSpec> = h.tensors.iter().map(TensorSpec::from_info).collect();
    let mut out = Vec::new();
    let mut w = GgufWriter::new(&mut out, h.version, &h.metadata, specs).expect("an accepted header is writable");
    for t in &h.tensors {
        w.write_tensor(&vec![0u8; t.n_bytes as usize]).expect("sizes agree");
    }
    w.finish().expect("all tensors written");
    out
}
