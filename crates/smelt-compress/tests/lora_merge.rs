//! A LoRA adapter written by smelt over SmolLM2-135M (its Q4_1 weights frozen) and the merged
//! model, read back by the `gguf` package: the adapter has llama.cpp's metadata and tensor layout
//! (`lora_a` dims `[in, r]`, `lora_b` `[r, out]`), and every merged matrix equals the base's
//! dequantized weights plus `(alpha / r) B A` computed in numpy
//! (`tests/reference/lora_merge_reference.py`); untouched tensors are copied byte for byte.
//! Needs `python3` with numpy and gguf (scripts/test installs them; `SMELT_PYTHON` overrides).

use std::process::Command;

use smelt_compress::merge::merge_adapter;
use smelt_formats::{GgmlType, GgufFile};
use smelt_kernels::pool::ThreadPool;
use smelt_models::backward::{LlamaTrain, LoraSpec};
use smelt_models::{Llama, LoadOptions};

#[test]
fn adapter_and_merge_match_the_gguf_package() {
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let model = Llama::open(&path, LoadOptions::default()).unwrap();
    let spec = LoraSpec { rank: 4, alpha: 8.0, targets: vec!["attn_v".into(), "ffn_down".into()] };
    let mut seed = 7u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let mut t = LlamaTrain::lora(&model, &spec, &mut next).unwrap();
    // B starts at zero; give it values so that the merge changes something.
    for slot in t.params.slots.clone().iter().filter(|s| s.name.ends_with(".lora_b")) {
        t.params.data[slot.range.clone()].iter_mut().for_each(|v| *v = 0.01 * next());
    }
    let adapter = t.adapter(spec.alpha).unwrap();
    assert_eq!(adapter.pairs.len(), 2 * model.cfg.n_layers);
    let dir = std::env::temp_dir().join(format!("smelt-lora-merge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ap, mp) = (dir.join("adapter.gguf"), dir.join("merged.gguf"));
    adapter.save(&ap, Some("SmolLM2")).unwrap();
    let file = GgufFile::open(&path).unwrap();
    merge_adapter(&file, &adapter, 1.0, Some(GgmlType::F32), None, &mp, &ThreadPool::new(2), &mut |_| {}).unwrap();
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python).arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/lora_merge_reference.py")).arg(&path).arg(&ap).arg(&mp).output().expect("run python3");
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["pairs"].as_u64(), Some(2 * model.cfg.n_layers as u64));
    eprintln!("merge against numpy: {r}");
}
