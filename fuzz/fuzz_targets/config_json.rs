//! HF config.json and sentence-transformers' pooling config on arbitrary bytes: a typed config
//! or an error, never a panic; a BERT config's per-layer head counts (`pruned_heads`) likewise.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Ok(smelt_formats::hf_config::HfConfig::Bert(c)) = smelt_formats::hf_config::parse_config(&v) {
        let _ = smelt_models::bert::layer_heads(&c);
    }
    let _ = serde_json::from_value::<smelt_formats::hf_config::PoolingConfig>(v);
});
