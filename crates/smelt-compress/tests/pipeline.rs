//! The quantization pipeline on a small GGUF built here: the plan's rules (roles, keep globs,
//! the fallback rule), the written file (types, sizes, re-read by the reader), the error
//! statistics against an independent computation, and refusals (NaN input, output = input).

use smelt_compress::{plan, quantize_file, Calib, CompressError, QuantizeConfig};
use smelt_formats::gguf::{GgufValue, GgufWriter, TensorSpec};
use smelt_formats::quant::{dequantize, quantize};
use smelt_formats::{GgmlType, GgufFile, Metadata};
use smelt_kernels::pool::ThreadPool;

/// Deterministic weights in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// (name, dims in ggml order, values): an embedding, two matrices (rows of 512 and of 576) and
/// a norm.
fn tensors() -> Vec<(&'static str, Vec<u64>, Vec<f32>)> {
    vec![
        ("token_embd.weight", vec![512, 8], values(512 * 8, 1)),
        ("blk.0.ffn_up.weight", vec![512, 4], values(512 * 4, 2)),
        ("blk.0.ffn_down.weight", vec![576, 4], values(576 * 4, 3)),
        ("blk.0.attn_norm.weight", vec![512], vec![1.0; 512]),
    ]
}

fn write_input(path: &std::path::Path, poison: Option<&str>) {
    let mut meta = Metadata::new();
    meta.set("general.architecture", GgufValue::String("llama".into()));
    let ts = tensors();
    let specs = ts.iter().map(|(n, d, _)| TensorSpec { name: n.to_string(), dims: d.clone(), ty: GgmlType::F32 }).collect();
    let mut w = GgufWriter::new(std::fs::File::create(path).unwrap(), 3, &meta, specs).unwrap();
    for (n, _, v) in &ts {
        let mut v = v.clone();
        if poison == Some(*n) {
            v[7] = f32::NAN;
        }
        w.write_tensor(f32_bytes(&v).as_slice()).unwrap();
    }
    w.finish().unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("smelt-compress-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_plan_follows_roles_keep_globs_and_the_fallback_rule() {
    let input = dir().join("plan.gguf");
    write_input(&input, None);
    let f = GgufFile::open(&input).unwrap();
    let cfg = QuantizeConfig { to: GgmlType::Q4_K, embed_type: Some(GgmlType::Q8_0), output_type: None, keep: vec!["*.ffn_up.*".into()] };
    let p = plan(&f, &cfg).unwrap();
    let target = |n: &str| p.iter().find(|x| x.t.name == n).unwrap().target;
    assert_eq!(target("token_embd.weight"), GgmlType::Q8_0, "the embedding's own target");
    assert_eq!(target("blk.0.ffn_up.weight"), GgmlType::F32, "kept by the glob");
    assert_eq!(target("blk.0.ffn_down.weight"), GgmlType::Q5_0, "rows of 576 fall back from Q4_K to Q5_0, as llama.cpp does");
    assert_eq!(target("blk.0.attn_norm.weight"), GgmlType::F32, "1-D tensors stay");
    assert!(p.iter().find(|x| x.t.name == "blk.0.ffn_down.weight").unwrap().is_fallback());
}

#[test]
fn the_written_file_has_the_planned_types_and_honest_error_statistics() {
    let d = dir();
    let (input, out) = (d.join("in.gguf"), d.join("out.gguf"));
    write_input(&input, None);
    let f = GgufFile::open(&input).unwrap();
    let p = plan(&f, &QuantizeConfig::new(GgmlType::Q8_0)).unwrap();
    let mut seen = Vec::new();
    let s = quantize_file(&f, &p, GgmlType::Q8_0, &Calib::default(), &out, &ThreadPool::new(2), &mut |t| seen.push(t.t.name.clone())).unwrap();
    assert_eq!(seen.len(), 4, "called once per tensor");
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(s.file_bytes, g.header.file_len, "bytes counted as written");
    assert_eq!(g.header.get_u64("general.file_type").unwrap(), 7);
    // The error of the Q8_0 tensors, recomputed independently of the pipeline from the input.
    let (mut e2, mut x2) = (0f64, 0f64);
    for (name, _, v) in tensors().iter().filter(|t| t.1.len() == 2) {
        assert_eq!(g.tensor(name).unwrap().ty, GgmlType::Q8_0);
        let mut q = vec![0u8; v.len() / 32 * 34];
        quantize(GgmlType::Q8_0, v, &mut q).unwrap();
        assert_eq!(g.tensor_by_name(name).unwrap().1, &q[..], "{name}: the reference quantizer's bytes");
        let mut back = vec![0f32; v.len()];
        dequantize(GgmlType::Q8_0, &q, &mut back).unwrap();
        for (a, b) in v.iter().zip(&back) {
            e2 += ((a - b) as f64).powi(2);
            x2 += (*a as f64).powi(2);
        }
    }
    let st = s.types[&GgmlType::Q8_0];
    assert!((st.err2 - e2).abs() <= 1e-9 * e2 && (st.x2 - x2).abs() <= 1e-9 * x2, "{st:?} vs {e2} {x2}");
    assert!(st.relative_rms() > 0.0 && st.relative_rms() < 0.01);
    assert_eq!(s.types[&GgmlType::F32].relative_rms(), 0.0);
}

#[test]
fn refusals_leave_no_output() {
    let d = dir();
    for poisoned in ["blk.0.ffn_up.weight", "blk.0.attn_norm.weight"] {
        let (input, out) = (d.join("nan.gguf"), d.join("nan-out.gguf"));
        write_input(&input, Some(poisoned));
        let f = GgufFile::open(&input).unwrap();
        let p = plan(&f, &QuantizeConfig::new(GgmlType::Q4_0)).unwrap();
        let e = quantize_file(&f, &p, GgmlType::Q4_0, &Calib::default(), &out, &ThreadPool::new(1), &mut |_| {}).unwrap_err();
        assert!(matches!(&e, CompressError::NonFinite { tensor } if tensor == poisoned), "{e}");
        assert!(!out.exists(), "nothing written");
    }
    let input = d.join("same.gguf");
    write_input(&input, None);
    let f = GgufFile::open(&input).unwrap();
    let p = plan(&f, &QuantizeConfig::new(GgmlType::Q4_0)).unwrap();
    let e = quantize_file(&f, &p, GgmlType::Q4_0, &Calib::default(), &input, &ThreadPool::new(1), &mut |_| {}).unwrap_err();
    assert!(matches!(e, CompressError::OutputIsInput(_)), "{e}");
    assert!(GgufFile::open(&input).is_ok(), "the input is intact");
}

#[test]
fn an_imatrix_weights_the_tensors_it_has_and_a_foreign_one_is_refused() {
    use smelt_compress::imatrix::{Imatrix, ImatrixEntry};
    let d = dir();
    let (input, out) = (d.join("im.gguf"), d.join("im-out.gguf"));
    write_input(&input, None);
    let f = GgufFile::open(&input).unwrap();
    let p = plan(&f, &QuantizeConfig::new(GgmlType::Q4_0)).unwrap();
    // Importance for ffn_up only: the first 64 columns matter 100x more.
    let imp: Vec<f32> = (0..512).map(|j| if j < 64 { 100.0 } else { 1.0 }).collect();
    let mut m = Imatrix::default();
    m.entries.insert("blk.0.ffn_up.weight".into(), ImatrixEntry { sums: imp.iter().map(|v| v * 4.0).collect(), counts: vec![4.0] });
    let s = quantize_file(&f, &p, GgmlType::Q4_0, &Calib { imatrix: Some(&m), ..Default::default() }, &out, &ThreadPool::new(2), &mut |_| {}).unwrap();
    assert_eq!(s.weighted, 1);
    assert_eq!(s.unweighted, ["token_embd.weight", "blk.0.ffn_down.weight"]);
    // The weighted tensor's error on the important columns is below round-to-nearest's.
    let g = GgufFile::open(&out).unwrap();
    let ours = g.tensor_f32(g.tensor("blk.0.ffn_up.weight").unwrap()).unwrap();
    let x = &tensors()[1].2;
    let mut rtn = vec![0u8; x.len() / 32 * 18];
    quantize(GgmlType::Q4_0, x, &mut rtn).unwrap();
    let mut back = vec![0f32; x.len()];
    dequantize(GgmlType::Q4_0, &rtn, &mut back).unwrap();
    let werr = |y: &[f32]| x.iter().zip(y).enumerate().map(|(i, (a, b))| imp[i % 512] * (a - b) * (a - b)).sum::<f32>();
    assert!(werr(&ours) < werr(&back), "{} vs {}", werr(&ours), werr(&back));
    // An imatrix for another model: no name matches, or a width differs.
    let mut other = Imatrix::default();
    other.entries.insert("model.layers.0.mlp.up_proj.weight".into(), ImatrixEntry { sums: vec![1.0; 512], counts: vec![1.0] });
    let e = quantize_file(&f, &p, GgmlType::Q4_0, &Calib { imatrix: Some(&other), ..Default::default() }, &out, &ThreadPool::new(1), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("another model"), "{e}");
    let mut narrow = Imatrix::default();
    narrow.entries.insert("blk.0.ffn_up.weight".into(), ImatrixEntry { sums: vec![1.0; 576], counts: vec![1.0] });
    let e = quantize_file(&f, &p, GgmlType::Q4_0, &Calib { imatrix: Some(&narrow), ..Default::default() }, &out, &ThreadPool::new(1), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("576") && e.to_string().contains("512"), "{e}");
}
