//! HF config.json and sentence-transformers' pooling config on arbitrary bytes: a typed config
//! or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = smelt_formats::hf_config::parse_config(&v);
    let _ = serde_json::from_value::<smelt_formats::hf_config::PoolingConfig>(v);
});
