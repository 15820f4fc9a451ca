//! The quantization registry against the `gguf` Python package, bit for bit.
//! Fixture and the script that made it: `tests/reference/make_quant_reference.py`.

use smelt_formats::quant::{dequantize_to_vec, quantize_to_vec};
use smelt_formats::{GgmlType, GgufFile};

fn fixture() -> GgufFile {
    GgufFile::open(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/quant_reference.gguf")).expect("fixture opens")
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn f32_tensor(f: &GgufFile, name: &str) -> Vec<f32> {
    let t = f.tensor(name).unwrap_or_else(|| panic!("fixture lacks {name}"));
    assert_eq!(t.ty, GgmlType::F32);
    f.tensor_f32(t).unwrap()
}

#[test]
fn dequantize_matches_gguf_package_bit_for_bit() {
    let f = fixture();
    let mut checked = Vec::new();
    for t in f.tensors() {
        let reference = match t.name.split_once('.') {
            Some(("q", ty)) => format!("dq.{ty}"),
            Some(("rq", ty)) => format!("rdq.{ty}"),
            _ => continue,
        };
        let ours = dequantize_to_vec(t.ty, f.tensor_data(t)).unwrap();
        let theirs = f32_tensor(&f, &reference);
        let mismatches = bits(&ours).iter().zip(bits(&theirs)).filter(|(a, b)| *a != b).count();
        assert_eq!(ours.len(), theirs.len(), "{}", t.name);
        assert_eq!(mismatches, 0, "{}: {mismatches} of {} values differ from the gguf package", t.name, ours.len());
        checked.push(t.name.clone());
    }
    // F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 quantized by the package; Q2_K..Q6_K, IQ4_NL and
    // the five legacy types again as random blocks; the eight lattice types (IQ1_S, IQ1_M, IQ2_XXS,
    // IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_XS) as random blocks.
    assert_eq!(checked.len(), 7 + 11 + 8, "checked {checked:?}");
}

#[test]
fn quantize_matches_gguf_package_bytes() {
    let f = fixture();
    let src = f32_tensor(&f, "src");
    let mut checked = 0;
    for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0] {
        let t = f.tensor(&format!("q.{ty}")).unwrap();
        assert_eq!(t.ty, ty);
        let ours = quantize_to_vec(ty, &src).unwrap();
        let theirs = f.tensor_data(t);
        let bad_blocks: Vec<usize> = ours
            .chunks(ty.block_bytes())
            .zip(theirs.chunks(ty.block_bytes()))
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i)
            .collect();
        assert!(bad_blocks.is_empty(), "{ty}: blocks {bad_blocks:?} differ from the gguf package");
        checked += 1;
    }
    assert_eq!(checked, 7);
}
