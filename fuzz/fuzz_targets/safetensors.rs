//! safetensors headers on arbitrary bytes: Ok or a typed error, never a panic; every tensor of
//! an accepted file converts to f32 or reports an unsupported dtype.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smelt_formats::safetensors::SafetensorsFile;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = SafetensorsFile::from_bytes(data.to_vec(), "fuzz") else { return };
    for t in f.tensors().to_vec() {
        let _ = f.tensor_f32(&t.name, None);
    }
});
