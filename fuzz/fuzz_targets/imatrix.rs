//! Importance-matrix files (llama.cpp's GGUF form and legacy .dat) on arbitrary bytes: an
//! imatrix or a typed error, never a panic and never an allocation the input does not pay for;
//! an accepted one writes back in both forms and reads again with the same entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smelt_compress::imatrix::Imatrix;

fuzz_target!(|data: &[u8]| {
    let p = std::path::Path::new("fuzz");
    let Ok(m) = Imatrix::from_bytes(data.to_vec(), p) else { return };
    let total: usize = m.entries.values().map(|e| e.sums.len()).sum();
    if total > 1 << 20 {
        return;
    }
    let g = Imatrix::from_bytes(m.to_gguf_bytes().expect("an accepted imatrix writes"), p).expect("our GGUF reads");
    assert_eq!(g.entries.keys().collect::<Vec<_>>(), m.entries.keys().collect::<Vec<_>>());
    let _ = Imatrix::from_bytes(m.to_dat_bytes(), p);
});
