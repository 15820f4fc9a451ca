//! smelt's importance matrix against llama-imatrix's on the same model, text and chunking
//! (fixtures made by tests/reference/make_imatrix_fixtures.sh, layers 0, 14 and 29 kept): both of
//! llama.cpp's file forms read back with the same importance, and smelt's vectors point the same
//! way as llama.cpp's (cosine > 0.999 per tensor) with the same scale.

use smelt_compress::calib::{decoder_imatrix, run_decoder, CalibOptions, Collector};
use smelt_compress::imatrix::Imatrix;
use smelt_kernels::pool::ThreadPool;
use smelt_models::LoadOptions;

fn fixture(form: &str) -> Imatrix {
    Imatrix::read(std::path::Path::new(&format!("{}/tests/reference/llama_imatrix_smollm2.{form}", env!("CARGO_MANIFEST_DIR")))).unwrap()
}

#[test]
fn llama_cpp_files_of_both_forms_read_with_the_same_importance() {
    let (g, d) = (fixture("gguf"), fixture("dat"));
    assert_eq!(g.entries.len(), 21, "7 matrices x 3 layers");
    assert_eq!(g.entries.keys().collect::<Vec<_>>(), d.entries.keys().collect::<Vec<_>>());
    assert_eq!((g.chunk_count, g.chunk_size), (2, 256));
    assert_eq!(d.chunk_count, 2);
    for (name, e) in &g.entries {
        let (a, b) = (e.importance(), d.entries[name].importance());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-20), "{name}: {x} vs {y}");
        }
    }
}

#[test]
fn smelt_importance_matches_llama_imatrix() {
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let m = smelt_models::load(&path, LoadOptions::default()).unwrap();
    let pool = ThreadPool::new(2);
    let text = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/austen/sensesensibility.txt")).expect("../shared beside the repository");
    let text = String::from_utf8_lossy(&text[..20000]).into_owned();
    let opts = CalibOptions { ctx: 256, max_chunks: Some(2), process_output: false };
    let mut c = Collector::new(&pool);
    let chunks = run_decoder(&m.model, &m.tok, &pool, &text, opts, &mut c, &mut |_, _| {}).unwrap();
    let ours = decoder_imatrix(&m.model, &c.finish().unwrap(), "calib", chunks, opts);
    let theirs = fixture("gguf");
    for (name, e) in &theirs.entries {
        let (a, b) = (ours.entries[name].importance(), e.importance());
        let dot: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let cos = dot / (na * nb);
        assert!(cos > 0.999, "{name}: cosine {cos}");
        assert!((na / nb - 1.0).abs() < 0.02, "{name}: norms {na} vs {nb}");
        assert_eq!(ours.entries[name].counts, e.counts, "{name}: rows seen");
    }
}
