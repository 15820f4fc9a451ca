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
