//! safetensors and config.json: the real all-MiniLM-L6-v2 files, and broken files.

use std::collections::HashMap;

use smelt_formats::hf_config::{load_config, load_pooling, HfConfig};
use smelt_formats::safetensors::{Dtype, SafetensorsFile};
use smelt_formats::SafetensorsError;

#[test]
fn real_minilm_loads_with_typed_config() {
    let dir = smelt_assets::ensure("all-minilm-l6-v2").expect("fetch all-minilm-l6-v2");
    let st = SafetensorsFile::open(dir.join("model.safetensors")).unwrap();
    // 22,713,216 weights plus the 512-entry position_ids buffer, as the header lists them.
    assert_eq!((st.tensors().len(), st.n_params()), (104, 22_713_728));
    let emb = st.get("embeddings.word_embeddings.weight").unwrap();
    assert_eq!((emb.dtype, emb.shape.as_slice()), (Dtype::F32, &[30522usize, 384][..]));
    let ln = st.tensor_f32("encoder.layer.5.output.LayerNorm.weight", Some(&[384])).unwrap();
    assert!(ln.iter().all(|v| v.is_finite()) && ln.iter().any(|&v| v != 1.0));
    assert!(matches!(
        st.tensor_f32("encoder.layer.5.output.LayerNorm.weight", Some(&[385])),
        Err(SafetensorsError::WrongShape { .. })
    ));
    assert!(matches!(st.tensor_f32("encoder.layer.6.output.dense.weight", None), Err(SafetensorsError::MissingTensor { available: 104, .. })));
    let HfConfig::Bert(cfg) = load_config(&dir.join("config.json")).unwrap() else { panic!("not a BERT config") };
    assert_eq!((cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size), (384, 6, 12, 1536));
    let pool = load_pooling(&dir.join("1_Pooling/config.json")).unwrap();
    assert!(pool.pooling_mode_mean_tokens && !pool.pooling_mode_cls_token);
}

fn small_file() -> Vec<u8> {
    let data: Vec<u8> = [1.0f32, -2.0, 3.5, 0.25].iter().flat_map(|v| v.to_le_bytes()).collect();
    let half: Vec<u8> = [half::f16::from_f32(1.5), half::f16::from_f32(-0.5)].iter().flat_map(|v| v.to_le_bytes()).collect();
    let ids: Vec<u8> = [7i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = vec![
        ("a", safetensors::tensor::TensorView::new(Dtype::F32, vec![2, 2], &data).unwrap()),
        ("h", safetensors::tensor::TensorView::new(Dtype::F16, vec![2], &half).unwrap()),
        ("ids", safetensors::tensor::TensorView::new(Dtype::I64, vec![2], &ids).unwrap()),
    ];
    safetensors::serialize(views, None::<HashMap<String, String>>).unwrap()
}

#[test]
fn dtypes_convert_to_f32() {
    let st = SafetensorsFile::from_bytes(small_file(), "small").unwrap();
    assert_eq!(st.tensor_f32("a", Some(&[2, 2])).unwrap(), vec![1.0, -2.0, 3.5, 0.25]);
    assert_eq!(st.tensor_f32("h", None).unwrap(), vec![1.5, -0.5]);
    assert_eq!(st.tensor_f32("ids", None).unwrap(), vec![7.0, -1.0]);
}

#[test]
fn broken_files_give_errors_not_panics() {
    let good = small_file();
    for cut in 0..good.len() {
        assert!(SafetensorsFile::from_bytes(good[..cut].to_vec(), "cut").is_err(), "cut at {cut}");
    }
    for i in 0..good.len() {
        for x in [0u8, b'9', b'"', 0xff] {
            let mut c = good.clone();
            c[i] = x;
            let _ = SafetensorsFile::from_bytes(c, "flip");
        }
    }
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = SafetensorsFile::from_bytes(huge, "huge").err().unwrap();
    assert!(matches!(err, SafetensorsError::Invalid { .. }), "{err}");
    let json = br#"{"a":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,16]}}"#;
    let mut bad = (json.len() as u64).to_le_bytes().to_vec();
    bad.extend_from_slice(json);
    bad.extend_from_slice(&[0; 16]);
    let err = SafetensorsFile::from_bytes(bad, "shape").err().unwrap();
    assert!(err.to_string().contains("shape"), "{err}");
}

/// A safetensors file from hand-written header entries `(name, dtype, shape, [start, end))`, with
/// `data` bytes after the header (so tests can write headers the serializer would refuse).
/// A header entry: name, dtype, shape, data offsets.
type Entry<'a> = (String, &'a str, Vec<usize>, (usize, usize));

fn raw(entries: &[Entry], data: usize) -> Vec<u8> {
    let body: Vec<String> = entries
        .iter()
        .map(|(n, dt, shape, (a, b))| format!("\"{n}\":{{\"dtype\":\"{dt}\",\"shape\":{shape:?},\"data_offsets\":[{a},{b}]}}"))
        .collect();
    let json = format!("{{{}}}", body.join(","));
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.resize(out.len() + data, 0);
    out
}

#[test]
fn generated_headers_with_duplicate_or_overlapping_tensors_are_refused() {
    // xorshift64*: the same cases on every run.
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    };
    let dtypes = [("F32", 4), ("F16", 2), ("BF16", 2), ("I64", 8), ("U8", 1)];
    for case in 0..300 {
        let n = 2 + next(5);
        let mut entries = Vec::new();
        let mut at = 0;
        for i in 0..n {
            let (dt, size) = dtypes[next(dtypes.len())];
            let shape = vec![1 + next(4), 1 + next(3)];
            let len = shape.iter().product::<usize>() * size;
            entries.push((format!("layer.{i}.weight"), dt, shape, (at, at + len)));
            at += len;
        }
        let st = SafetensorsFile::from_bytes(raw(&entries, at), "ok").unwrap_or_else(|e| panic!("case {case}: {e}"));
        assert_eq!(st.tensors().len(), n);

        // The same name twice: once as a copy of an entry, once on another tensor's bytes.
        let (a, b) = (next(n), next(n));
        let mut dup = entries.clone();
        dup.push(entries[a].clone());
        let err = SafetensorsFile::from_bytes(raw(&dup, at), "dup").err().unwrap_or_else(|| panic!("case {case}: a repeated entry was accepted"));
        assert!(err.to_string().contains(&entries[a].0) && err.to_string().contains("twice"), "case {case}: {err}");
        if a != b {
            let mut renamed = entries.clone();
            renamed[b].0 = entries[a].0.clone();
            let err = SafetensorsFile::from_bytes(raw(&renamed, at), "dup").err().unwrap_or_else(|| panic!("case {case}: a duplicate name was accepted"));
            assert!(err.to_string().contains("twice"), "case {case}: {err}");
        }

        // A tensor's range moved onto its neighbour's, or grown over it.
        let i = next(n - 1);
        let mut moved = entries.clone();
        let shift = 1 + next(moved[i].3 .1 - moved[i].3 .0);
        moved[i + 1].3 = (moved[i + 1].3 .0 - shift, moved[i + 1].3 .1 - shift);
        assert!(SafetensorsFile::from_bytes(raw(&moved, at), "moved").is_err(), "case {case}: overlap accepted");
        let mut grown = entries.clone();
        grown[i].3 .1 += 1;
        assert!(SafetensorsFile::from_bytes(raw(&grown, at), "grown").is_err(), "case {case}: overrun accepted");
        let mut retyped = entries.clone();
        retyped[i].1 = if retyped[i].1 == "I64" { "U8" } else { "I64" };
        assert!(SafetensorsFile::from_bytes(raw(&retyped, at), "retyped").is_err(), "case {case}: wrong size for the dtype accepted");
    }
}
