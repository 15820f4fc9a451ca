//! smelt's encoders against recorded reference embeddings (tests/reference/encoder_reference.py
//! made them; rerun instructions are in its docs): all-MiniLM-L6-v2 against sentence-transformers,
//! paraphrase-MiniLM-L3-v2 (read from its ONNX file) against ONNX Runtime. Texts: STS-B dev
//! (from ../shared/data), Austen paragraphs and edge cases (tests/reference/encoder_texts.jsonl).

use std::path::PathBuf;

use smelt_formats::npy::read_npy;
use smelt_kernels::pool::ThreadPool;
use smelt_models::stats::{cosine, spearman};
use smelt_models::{EmbedOptions, Encoder};

fn reference(file: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference")).join(file)
}

fn shared_data(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data")).join(rel)
}

/// STS-B dev: (all sentences, sentence 1 then 2 of each pair; gold scores).
fn sts() -> (Vec<String>, Vec<f64>) {
    let text = std::fs::read_to_string(shared_data("stsbenchmark/sts-dev.csv")).unwrap();
    let (mut texts, mut gold) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        gold.push(f[4].parse().unwrap());
        texts.push(f[5].to_string());
        texts.push(f[6].to_string());
    }
    (texts, gold)
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(reference("encoder_reference.json")).unwrap()).unwrap()
}

/// The reference rows' texts: the first `sts_kept` STS sentences, then encoder_texts.jsonl.
fn reference_texts(sts: &[String]) -> Vec<String> {
    let kept = meta()["texts"]["sts_kept"].as_u64().unwrap() as usize;
    let extra = std::fs::read_to_string(reference("encoder_texts.jsonl")).unwrap();
    sts[..kept].iter().cloned().chain(extra.lines().map(|l| serde_json::from_str::<String>(l).unwrap())).collect()
}

fn sts_spearman(emb: &[Vec<f32>], gold: &[f64]) -> f64 {
    let cos: Vec<f64> = (0..gold.len()).map(|i| cosine(&emb[2 * i], &emb[2 * i + 1])).collect();
    spearman(&cos, gold)
}

/// Embeds the reference texts and all of STS-B; checks the minimum cosine to the fixture and the
/// STS-B Spearman against the reference's (`int8`: with those matrices in int8, to the looser
/// bounds of the int8 path).
fn check(asset: &str, fixture: &str, key: &str, int8: Option<&str>, min_cos: f64, rho_tol: f64) {
    let mut enc = Encoder::load(&smelt_assets::ensure(asset).unwrap(), None).unwrap();
    if let Some(spec) = int8 {
        assert!(enc.quantize_int8(&ThreadPool::new(2), &spec.parse().unwrap(), None).unwrap() > 0);
    }
    let asset = format!("{asset}{}", int8.map(|s| format!(" (int8 {s})")).unwrap_or_default());
    let pool = ThreadPool::new(2);
    let (sts, gold) = sts();
    let texts = reference_texts(&sts);
    let refs = read_npy(&std::fs::read(reference(fixture)).unwrap()).unwrap();
    assert_eq!(refs.shape, [texts.len(), enc.dim()]);
    let refs = refs.data.to_f32();
    let strs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ours = enc.embed(&pool, &strs, &EmbedOptions::default()).unwrap();
    let (mut worst, mut at) = (1.0f64, 0);
    for (i, v) in ours.iter().enumerate() {
        let c = cosine(v, &refs[i * enc.dim()..(i + 1) * enc.dim()]);
        if c < worst {
            (worst, at) = (c, i);
        }
    }
    eprintln!("{asset}: {} texts, min cosine {worst:.7} at {at} ({:?})", texts.len(), &texts[at].chars().take(60).collect::<String>());
    assert!(worst >= min_cos, "min cosine {worst} at text {at}: {:?}", texts[at]);

    // STS-B dev Spearman over all 1,500 pairs against scipy's on the reference embeddings.
    let sts_refs: Vec<&str> = sts.iter().map(String::as_str).collect();
    let ours_sts = enc.embed(&pool, &sts_refs, &EmbedOptions::default()).unwrap();
    let rho = sts_spearman(&ours_sts, &gold);
    let rho_ref = meta()[key]["sts_dev_spearman"].as_f64().unwrap();
    eprintln!("{asset}: STS-B dev Spearman {rho:.5}, reference {rho_ref:.5}");
    assert!((rho - rho_ref).abs() <= rho_tol, "Spearman {rho} vs reference {rho_ref}");
}

#[test]
fn all_minilm_l6_v2_matches_sentence_transformers() {
    check("all-minilm-l6-v2", "minilm_l6_st.npy", "all-minilm-l6-v2", None, 0.9999, 0.001);
}

/// The int8 path (every matrix of every layer) against the fp32 reference: the bounds.
#[test]
fn all_minilm_l6_v2_int8_stays_close_to_fp32() {
    check("all-minilm-l6-v2", "minilm_l6_st.npy", "all-minilm-l6-v2", Some("all"), 0.99, 0.005);
}

#[test]
fn paraphrase_minilm_l3_v2_from_onnx_matches_onnx_runtime() {
    check("paraphrase-minilm-l3-v2", "minilm_l3_ort.npy", "paraphrase-minilm-l3-v2", None, 0.9999, 0.001);
}

#[test]
fn embedding_quantization_matches_sentence_transformers() {
    use smelt_formats::npy::NpyData;
    use smelt_models::embed_quant::{quantize, ranges, Precision};
    let refs = read_npy(&std::fs::read(reference("minilm_l6_st.npy")).unwrap()).unwrap();
    let dim = refs.shape[1];
    let rows = refs.data.to_f32();
    let (lo, hi) = ranges(rows.chunks_exact(dim), dim);
    let NpyData::I8(int8) = read_npy(&std::fs::read(reference("minilm_l6_int8.npy")).unwrap()).unwrap().data else { panic!("int8 fixture") };
    let NpyData::U8(ubin) = read_npy(&std::fs::read(reference("minilm_l6_ubinary.npy")).unwrap()).unwrap().data else { panic!("uint8 fixture") };
    let mut out = vec![0u8; dim];
    for (i, want) in int8.chunks_exact(dim).enumerate() {
        quantize(&rows[i * dim..(i + 1) * dim], Precision::Int8, &lo, &hi, &mut out);
        assert_eq!(out.iter().map(|&b| b as i8).collect::<Vec<_>>(), want, "int8 row {i}");
    }
    let w = Precision::Ubinary.width(dim);
    assert_eq!(ubin.len(), rows.len() / dim * w);
    for (i, want) in ubin.chunks_exact(w).enumerate() {
        quantize(&rows[i * dim..(i + 1) * dim], Precision::Ubinary, &lo, &hi, &mut out[..w]);
        assert_eq!(&out[..w], want, "ubinary row {i}");
    }
}
