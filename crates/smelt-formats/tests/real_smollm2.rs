//! The real SmolLM2-135M GGUF (fetched through smelt-assets): every tensor dequantizes exactly as
//! the `gguf` Python package does it (hashes recorded by `tests/reference/dequant_hashes.py`),
//! re-quantizing to K-quants and IQ4_NL gives the bytes llama.cpp's `llama-quantize` writes
//! (hashes recorded by `tests/reference/llama_quantize_hashes.py`), and reading then re-writing
//! the file gives the same bytes.

use std::io::Write;

use sha2::{Digest, Sha256};
use smelt_formats::GgufFile;

fn model() -> GgufFile {
    let path = smelt_assets::ensure("smollm2-135m").expect("fetch smollm2-135m");
    GgufFile::open(path).expect("open smollm2")
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_tensor_dequantizes_like_the_gguf_package() {
    let f = model();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/smollm2_dequant_sha256.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tensors = reference["tensors"].as_object().unwrap();
    assert_eq!(tensors.len(), f.tensors().len());
    for t in f.tensors() {
        let r = &tensors[&t.name];
        assert_eq!(r["type"].as_str().unwrap(), t.ty.name(), "{}", t.name);
        // The gguf package reports dims in ggml order, as we do.
        let dims: Vec<u64> = r["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(dims, t.dims, "{}", t.name);
        let values = f.tensor_f32(t).unwrap();
        let mut h = Sha256::new();
        for v in &values {
            h.update(v.to_le_bytes());
        }
        assert_eq!(hex(h.finalize()), r["sha256"].as_str().unwrap(), "{} ({})", t.name, t.ty);
    }
}

struct HashWriter(Sha256, u64);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn rewrite_is_byte_identical() {
    let f = model();
    let w = f.write_to(HashWriter(Sha256::new(), 0)).unwrap();
    assert_eq!(w.1, f.header.file_len);
    let expected = smelt_assets::find("smollm2-135m").unwrap().files[0].sha256;
    assert_eq!(hex(w.0.finalize()), expected);
}

#[test]
fn header_facts_match_the_published_model() {
    let f = model();
    let h = &f.header;
    assert_eq!((h.version, h.alignment, h.tensors.len(), h.metadata.len()), (3, 32, 272, 33));
    assert_eq!(h.architecture(), Some("llama"));
    assert_eq!(h.get_u64("llama.block_count").unwrap(), 30);
    assert_eq!(h.get_u64("llama.embedding_length").unwrap(), 576);
    assert_eq!(h.get_u64("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(h.get_f64("llama.rope.freq_base").unwrap(), 100000.0);
    let tokens = h.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(h.get("tokenizer.ggml.merges").unwrap().as_array().unwrap().len(), 48900);
    assert_eq!(h.n_params(), 134_515_008);
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!((emb.ty, emb.dims.as_slice()), (smelt_formats::GgmlType::Q8_0, &[576u64, 49152][..]));
}

#[test]
fn k_quants_and_iq4_nl_match_llama_quantize_bytes() {
    let f = model();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/llama_quantize_sha256.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut checked = 0;
    for (ty, tensors) in reference["types"].as_object().unwrap() {
        let ty = smelt_formats::GgmlType::from_name(ty).unwrap();
        // IQ4_NL covers all 211 matrices; every 8th keeps the test quick.
        for (i, (name, sha)) in tensors.as_object().unwrap().iter().enumerate() {
            if ty == smelt_formats::GgmlType::IQ4_NL && i % 8 != 0 {
                continue;
            }
            let t = f.tensor(name).unwrap();
            let x = f.tensor_f32(t).unwrap();
            let q = smelt_formats::quant::quantize_to_vec(ty, &x).unwrap();
            assert_eq!(hex(Sha256::digest(&q)), sha.as_str().unwrap(), "{name} as {ty}");
            checked += 1;
        }
    }
    assert_eq!(checked, 5 * 30 + 211usize.div_ceil(8));
}
