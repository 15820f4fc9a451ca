//! Shared setup of the tests against numpy: SmolLM2 loaded, and the statistics of its real
//! inputs over the first 60,000 bytes of `sensesensibility.txt` (4 chunks of 256 tokens).
#![allow(dead_code)]

use std::collections::BTreeMap;

use smelt_compress::calib::{run_decoder, CalibOptions, Collector, InputStats};
use smelt_formats::npy::{write_npy, NpyArray, NpyData};
use smelt_formats::GgufFile;
use smelt_kernels::pool::ThreadPool;
use smelt_models::observe::MatrixInput;
use smelt_models::LoadOptions;

/// The model, its file, a pool of 2 threads, the calibration statistics and text.
pub struct Calibrated {
    pub m: smelt_models::Loaded,
    pub file: GgufFile,
    pub pool: ThreadPool,
    pub stats: BTreeMap<(usize, MatrixInput), InputStats>,
    /// The calibration text.
    pub text: String,
}

/// SmolLM2 calibrated on Austen, with Hessians for `layers`.
pub fn calibrated(layers: impl IntoIterator<Item = usize>) -> Calibrated {
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let m = smelt_models::load(&path, LoadOptions::default()).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let pool = ThreadPool::new(2);
    let text = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/austen/sensesensibility.txt")).expect("../shared beside the repository");
    let text = String::from_utf8_lossy(&text[..60_000]).into_owned();
    let mut c = Collector::new(&pool).hessians_for(layers);
    run_decoder(&m.model, &m.tok, &pool, &text, CalibOptions { ctx: 256, max_chunks: Some(4), process_output: false }, &mut c, &mut |_, _| {}).unwrap();
    let stats = c.finish().unwrap();
    Calibrated { m, file, pool, stats, text }
}

/// Writes one array for the numpy script.
pub fn save(path: &std::path::Path, shape: Vec<usize>, data: NpyData) {
    write_npy(&mut std::fs::File::create(path).unwrap(), &NpyArray { shape, data }).unwrap();
}
