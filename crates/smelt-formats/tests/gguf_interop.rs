//! GGUF written by smelt, read back by the `gguf` Python package (`tests/reference/gguf_to_json.py`):
//! same metadata (keys, value types, values) and same tensors (names, types, dims, bytes).
//! Needs `python3` with `gguf` and `numpy` (scripts/test installs them; `SMELT_PYTHON` overrides).

use std::process::Command;

use sha2::{Digest, Sha256};
use smelt_formats::gguf::{GgufArray, GgufValue, GgufWriter, Metadata, TensorSpec};
use smelt_formats::quant::quantize_to_vec;
use smelt_formats::{GgmlType, GgufFile};

fn python() -> String {
    std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn sample_metadata() -> Metadata {
    let mut m = Metadata::new();
    m.set("general.architecture", GgufValue::String("llama".into()));
    m.set("general.name", GgufValue::String("smelt interop ✓ ünïcode".into()));
    m.set("t.u8", GgufValue::U8(200));
    m.set("t.i8", GgufValue::I8(-100));
    m.set("t.u16", GgufValue::U16(60000));
    m.set("t.i16", GgufValue::I16(-30000));
    m.set("t.u32", GgufValue::U32(4_000_000_000));
    m.set("t.i32", GgufValue::I32(-2_000_000_000));
    m.set("t.f32", GgufValue::F32(0.1));
    m.set("t.bool", GgufValue::Bool(true));
    m.set("t.u64", GgufValue::U64(1 << 60));
    m.set("t.i64", GgufValue::I64(-(1 << 60)));
    m.set("t.f64", GgufValue::F64(std::f64::consts::PI));
    m.set("t.empty_string", GgufValue::String(String::new()));
    m.set("t.strings", GgufValue::Array(GgufArray::String(vec!["a".into(), "".into(), "Ġthe".into(), "<|im_end|>".into()])));
    m.set("t.i32s", GgufValue::Array(GgufArray::I32(vec![1, -2, 3])));
    m.set("t.f32s", GgufValue::Array(GgufArray::F32(vec![0.5, -1.25])));
    m.set("t.bools", GgufValue::Array(GgufArray::Bool(vec![true, false])));
    m.set("t.u8s", GgufValue::Array(GgufArray::U8(vec![0, 255])));
    m.set("t.nested", GgufValue::Array(GgufArray::Array(vec![GgufArray::U32(vec![1, 2]), GgufArray::String(vec!["x".into()])])));
    m.set("t.empty_array", GgufValue::Array(GgufArray::F64(vec![])));
    m
}

fn sample_tensors() -> Vec<(TensorSpec, Vec<u8>)> {
    let x: Vec<f32> = (0..256 * 3).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    [(GgmlType::F32, vec![256, 3]), (GgmlType::F16, vec![256, 3]), (GgmlType::Q8_0, vec![256, 3]), (GgmlType::Q4_0, vec![768]), (GgmlType::Q4_K, vec![256, 1, 3]), (GgmlType::Q6_K, vec![768, 1, 1, 1]), (GgmlType::IQ2_XS, vec![256, 3]), (GgmlType::IQ3_S, vec![256, 3]), (GgmlType::IQ4_XS, vec![256, 3])]
        .into_iter()
        .enumerate()
        .map(|(i, (ty, dims))| (TensorSpec { name: format!("blk.{i}.{}", ty.name().to_lowercase()), dims, ty }, quantize_to_vec(ty, &x).unwrap()))
        .collect()
}

fn write_sample(path: &std::path::Path) {
    let tensors = sample_tensors();
    let file = std::fs::File::create(path).unwrap();
    let mut w = GgufWriter::new(file, 3, &sample_metadata(), tensors.iter().map(|t| t.0.clone()).collect()).unwrap();
    for (_, data) in &tensors {
        w.write_tensor(data).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn written_files_read_back_in_smelt() {
    let path = std::env::temp_dir().join(format!("smelt-interop-self-{}.gguf", std::process::id()));
    write_sample(&path);
    let f = GgufFile::open(&path).unwrap();
    let meta = sample_metadata();
    assert_eq!(f.header.metadata, meta);
    for ((spec, data), t) in sample_tensors().iter().zip(f.tensors()) {
        assert_eq!((&spec.name, &spec.dims, spec.ty), (&t.name, &t.dims, t.ty));
        assert_eq!(f.tensor_data(t), &data[..]);
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn written_files_load_in_the_gguf_python_package() {
    let path = std::env::temp_dir().join(format!("smelt-interop-py-{}.gguf", std::process::id()));
    write_sample(&path);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/gguf_to_json.py");
    let out = Command::new(python()).arg(script).arg(&path).output().unwrap_or_else(|e| {
        panic!("cannot run {}: {e}; install Python 3 with `pip install gguf numpy` (scripts/test does)", python())
    });
    std::fs::remove_file(&path).unwrap();
    assert!(out.status.success(), "gguf package failed to read our file:\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let meta = sample_metadata();
    let kv = seen["kv"].as_object().unwrap();
    assert_eq!(kv.len(), meta.len(), "keys seen: {:?}", kv.keys().collect::<Vec<_>>());
    for (key, value) in meta.iter() {
        let s = &kv[key];
        let types: Vec<&str> = s["types"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        let expected_head = smelt_formats::gguf::value::type_name(value.type_id());
        assert_eq!(types[0], expected_head, "{key}");
        match value {
            GgufValue::Array(GgufArray::Array(_)) => assert_eq!(types[1], "ARRAY", "{key}"),
            GgufValue::Array(a) if a.is_empty() => assert_eq!(s["value"], serde_json::json!([]), "{key}"),
            GgufValue::Array(a) => {
                assert_eq!(types[1], smelt_formats::gguf::value::type_name(a.elem_type_id()), "{key}");
                assert_eq!(s["value"], a.to_json(), "{key}");
            }
            GgufValue::F32(v) => assert_eq!(s["value"].as_f64().unwrap(), *v as f64, "{key}"),
            other => assert_eq!(s["value"], other.to_json(), "{key}"),
        }
    }
    let tensors = seen["tensors"].as_array().unwrap();
    let ours = sample_tensors();
    assert_eq!(tensors.len(), ours.len());
    for (t, (spec, data)) in tensors.iter().zip(&ours) {
        assert_eq!(t["name"], spec.name.as_str());
        assert_eq!(t["type"], spec.ty.name());
        let dims: Vec<u64> = t["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(dims, spec.dims);
        let hash: String = Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(t["sha256"], hash.as_str(), "{}", spec.name);
        // The package reads the blocks as smelt meant them (the lattice types included).
        let ours: f64 = smelt_formats::quant::dequantize_to_vec(spec.ty, data).unwrap().iter().map(|v| v.abs() as f64).sum();
        let theirs = t["abs_sum"].as_f64().unwrap();
        assert!((ours - theirs).abs() <= 1e-6 * ours.max(1.0), "{}: the gguf package dequantizes to |sum| {theirs}, smelt to {ours}", spec.name);
    }
}
