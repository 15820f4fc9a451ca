//! The observer's statistics against numpy: SmolLM2 runs two chunks of Austen through
//! `forward_observed`; a recorder keeps the raw inputs of a few matrices while the collector
//! sums them; numpy (tests/reference/gram.py) computes `X^T X` and the column sums of squares of
//! the recorded inputs in float64, and the collector's must agree.
//!
//! Needs `python3` with numpy (scripts/test installs it; `SMELT_PYTHON` overrides).

use std::collections::BTreeMap;
use std::process::Command;

use smelt_compress::calib::Collector;
use smelt_formats::npy::{read_npy, write_npy, NpyArray, NpyData};
use smelt_kernels::pool::ThreadPool;
use smelt_models::observe::{MatrixInput, Observer};
use smelt_models::LoadOptions;

/// Keeps the rows of the chosen inputs, and passes every observation on to the collector.
struct Recorder<'a, 'p> {
    inner: &'a mut Collector<'p>,
    keep: Vec<(usize, MatrixInput)>,
    rows: BTreeMap<(usize, MatrixInput), (usize, Vec<f32>)>,
}

impl Observer for Recorder<'_, '_> {
    fn observe(&mut self, layer: usize, input: MatrixInput, x: &[f32], rows: usize, cols: usize) {
        if self.keep.contains(&(layer, input)) {
            let e = self.rows.entry((layer, input)).or_insert((cols, Vec::new()));
            e.1.extend_from_slice(x);
        }
        self.inner.observe(layer, input, x, rows, cols);
    }
}

#[test]
fn collected_gram_matrices_and_importance_equal_numpy_on_recorded_inputs() {
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let m = smelt_models::load(&path, LoadOptions::default()).unwrap();
    let pool = ThreadPool::new(2);
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/austen/persuasion.txt")).expect("../shared beside the repository");
    let tokens = m.tok.encode(&text[..20_000], false);
    let n_layers = m.model.layers.len();
    let keep = vec![(3, MatrixInput::AttnQkv), (7, MatrixInput::AttnOutput), (11, MatrixInput::FfnUp), (29, MatrixInput::FfnDown), (n_layers, MatrixInput::Output)];
    let mut collector = Collector::new(&pool).hessians_for(keep.iter().map(|k| k.0));
    let mut rec = Recorder { inner: &mut collector, keep: keep.clone(), rows: BTreeMap::new() };
    // Two chunks from empty contexts, of different lengths: the sums run across observations.
    for chunk in [&tokens[..96], &tokens[96..96 + 40]] {
        let mut sess = m.model.session(256);
        m.model.forward_observed(&pool, &mut sess, chunk, true, Some(&mut rec)).unwrap();
    }
    let recorded = rec.rows;
    let stats = collector.finish().unwrap();
    assert_eq!(stats.len(), 4 * n_layers + 1, "every block input of every layer, and the head");
    assert!(stats[&(0, MatrixInput::AttnQkv)].hessian.is_none(), "Hessians only where asked");

    let dir = std::env::temp_dir().join(format!("smelt-observer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut inputs = Vec::new();
    for (&(l, k), (cols, rows)) in &recorded {
        let p = dir.join(format!("{l}-{k:?}.npy"));
        let mut f = std::fs::File::create(&p).unwrap();
        write_npy(&mut f, &NpyArray { shape: vec![rows.len() / cols, *cols], data: NpyData::F32(rows.clone()) }).unwrap();
        inputs.push(p);
    }
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python).arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/gram.py")).args(&inputs).arg(&dir).output().expect("run python3");
    assert!(out.status.success(), "gram.py failed: {}", String::from_utf8_lossy(&out.stderr));
    for (l, k) in keep {
        let s = &stats[&(l, k)];
        let load = |what: &str| read_npy(&std::fs::read(dir.join(format!("{l}-{k:?}.{what}.npy"))).unwrap()).unwrap().data.to_f64();
        let (gram, sum2) = (load("gram"), load("sum2"));
        assert_eq!(s.rows, 136, "{l} {k:?}: rows of both chunks");
        let h = s.hessian.as_ref().expect("a Hessian for the kept layers");
        let scale = gram.iter().fold(0f64, |a, v| a.max(v.abs()));
        let worst = h.iter().zip(&gram).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
        assert!(worst <= 1e-5 * scale, "{l} {k:?}: X^T X differs from numpy by {worst:e} (largest entry {scale:e})");
        for (j, (a, b)) in s.sum2.iter().zip(&sum2).enumerate() {
            assert!((a - b).abs() <= 1e-9 * b.abs().max(1e-30), "{l} {k:?} column {j}: sum of squares {a} vs numpy {b}");
        }
        // The Hessian's diagonal is the importance vector's sum.
        for (j, d) in (0..s.cols).map(|j| h[j * s.cols + j]).enumerate() {
            assert!((d - s.sum2[j]).abs() <= 1e-5 * s.sum2[j].max(1e-30), "{l} {k:?}: diagonal {j}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
