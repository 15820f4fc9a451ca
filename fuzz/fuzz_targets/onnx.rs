//! The ONNX protobuf reader on arbitrary bytes: initializers and nodes, or a typed error, never
//! a panic and never an allocation the input does not pay for.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = smelt_formats::onnx::parse(data);
});
