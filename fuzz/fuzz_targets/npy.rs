//! NPY arrays on arbitrary bytes: an array whose data matches its header, or an error; an
//! accepted array writes back to bytes that read as the same array.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smelt_formats::npy::{read_npy, write_npy};

fuzz_target!(|data: &[u8]| {
    let Ok(a) = read_npy(data) else { return };
    let mut out = Vec::new();
    write_npy(&mut out, &a).expect("an accepted array writes");
    let b = read_npy(&out).expect("our own output reads");
    assert_eq!(a.shape, b.shape);
});
