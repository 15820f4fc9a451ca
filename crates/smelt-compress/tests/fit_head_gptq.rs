//! `smelt fit`'s GPTQ candidates for the output head, on SmolLM2 (whose head is the tied
//! embedding): the Hessian handed to them is the one gathered on the head's input; GPTQ's
//! candidate has a smaller output error under that Hessian than the weighted one of the same
//! type (what GPTQ minimizes); every candidate of the head is measured alone on another text;
//! and the chosen GPTQ candidate is written byte for byte as it was measured, the rest of the
//! file untouched.

use smelt_compress::calib::{decoder_imatrix, head_hessian, run_decoder, CalibOptions, Collector};
use smelt_compress::fit::{head_gptq_candidates, probe, quantize_candidates, write_mix, Analysis, Mix};
use smelt_compress::gptq::GptqOptions;
use smelt_eval::lm::RefLogprobs;
use smelt_formats::{GgmlType, GgufFile};
use smelt_kernels::pool::ThreadPool;
use smelt_models::observe::MatrixInput;
use smelt_models::LoadOptions;

fn shared(rel: &str) -> String {
    let p = format!("{}/../../../shared/data/{rel}", env!("CARGO_MANIFEST_DIR"));
    let b = std::fs::read(&p).expect("../shared beside the repository");
    String::from_utf8_lossy(&b[..40_000]).into_owned()
}

/// `trace((W - Q) H (W - Q)^T)` over every 8th row: the head's output error summed over the
/// calibration tokens, for a sample of the vocabulary.
fn output_error(w: &[f32], q: &[f32], h: &[f64], cols: usize) -> f64 {
    let mut total = 0.0;
    let mut d = vec![0f64; cols];
    for (wr, qr) in w.chunks_exact(cols).zip(q.chunks_exact(cols)).step_by(8) {
        for ((x, a), b) in d.iter_mut().zip(wr).zip(qr) {
            *x = (*a - *b) as f64;
        }
        for (i, di) in d.iter().enumerate() {
            let row = &h[i * cols..(i + 1) * cols];
            total += di * row.iter().zip(&d).map(|(a, b)| a * b).sum::<f64>();
        }
    }
    total
}

#[test]
fn the_heads_gptq_candidates_are_measured_and_written_as_measured() {
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let m = smelt_models::load(&path, LoadOptions::default()).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let pool = ThreadPool::new(2);
    let mut model = m.model;
    let n = model.layers.len();
    let opts = CalibOptions { ctx: 256, max_chunks: Some(3), process_output: true };
    let mut c = Collector::new(&pool).hessians_for([n]);
    let chunks = run_decoder(&model, &m.tok, &pool, &shared("austen/sensesensibility.txt"), opts, &mut c, &mut |_, _| {}).unwrap();
    let stats = c.finish().unwrap();
    let imatrix = decoder_imatrix(&model, &stats, "test", chunks, opts);

    // The head's Hessian is the one gathered at the head's input, under the tied tensor's name.
    let (name, h) = head_hessian(&model, &stats).unwrap();
    assert_eq!(name, "token_embd.weight");
    let cols = model.cfg.dim;
    assert_eq!(h.len(), cols * cols);
    assert!(std::ptr::eq(h, stats[&(n, MatrixInput::Output)].hessian.as_deref().unwrap()));
    let t = file.tensor(&name).unwrap();
    let imp = imatrix.importance_for(&name, cols).unwrap();

    let mut choices = quantize_candidates(&file, &[t], Some(&imatrix), None, &[GgmlType::Q4_0], &pool, &mut |_, _, _| {}).unwrap();
    let gopts = GptqOptions::default();
    let extra = head_gptq_candidates(&file, t, h, Some(&imp), &[GgmlType::Q4_0, GgmlType::Q2_K], gopts, &pool, &mut |_, _, _| {}).unwrap();
    // Q2_K has a grid but 576-wide rows are not whole 256-blocks: only Q4_0.
    assert_eq!(extra.iter().map(|c| (c.ty, c.gptq)).collect::<Vec<_>>(), vec![(GgmlType::Q4_0, true)]);
    let w = file.tensor_f32(t).unwrap();
    let back = |data: &[u8]| smelt_formats::quant::dequantize_to_vec(GgmlType::Q4_0, data).unwrap();
    let weighted = choices[0].candidates.iter().find(|c| !c.kept).unwrap();
    let (eg, ew) = (output_error(&w, &back(&extra[0].data), h, cols), output_error(&w, &back(&weighted.data), h, cols));
    assert!(eg < 0.8 * ew, "GPTQ's output error {eg} against weighted rounding's {ew}");

    // Every candidate measured alone on another text; equal sizes ordered by loss.
    let tc = &mut choices[0];
    tc.candidates.extend(extra);
    tc.probe_all = true;
    let held: Vec<u32> = m.tok.encode(&shared("austen/persuasion.txt"), false)[..256].to_vec();
    let reference = RefLogprobs::new(&pool, &model, vec![held], 32).unwrap();
    probe(&mut model, &mut choices, &reference, &pool, &mut |_, _, _| {}).unwrap();
    let tc = &choices[0];
    let lossy: Vec<_> = tc.candidates.iter().filter(|c| !c.kept).collect();
    assert_eq!(lossy.len(), 2);
    assert!(lossy.iter().all(|c| c.loss > 0.0), "{:?}", lossy.iter().map(|c| c.loss).collect::<Vec<_>>());
    assert!(lossy[0].loss <= lossy[1].loss);
    assert_eq!(tc.probe, Some((GgmlType::Q4_0, lossy[0].loss)));
    eprintln!("head alone on Persuasion: Q4_0 GPTQ {:.5}, weighted {:.5}", lossy.iter().find(|c| c.gptq).unwrap().loss, lossy.iter().find(|c| !c.gptq).unwrap().loss);

    // The GPTQ candidate chosen and written: its bytes as measured, everything else as it was.
    let k = tc.candidates.iter().position(|c| c.gptq).unwrap();
    let mix = Mix { choice: vec![k], bytes: tc.candidates[k].bytes, loss: tc.candidates[k].loss };
    let measured = tc.candidates[k].data.clone();
    let analysis = Analysis { choices, imatrix, imatrix_chunks: chunks, reference, fixed_bytes: 0, params: file.header.n_params(), scaling: None, stats: None, head_gptq: Some((name.clone(), h.to_vec(), gopts)) };
    let out = std::env::temp_dir().join(format!("smelt-head-gptq-{}.gguf", std::process::id()));
    let summary = write_mix(&file, &analysis, &mix, None, &out, &pool, &mut |_, _, _, _| {}).unwrap();
    assert_eq!(summary.gptq, 1);
    let f = GgufFile::open(&out).unwrap();
    for t in file.tensors() {
        let written = f.tensor(&t.name).unwrap();
        if t.name == name {
            assert_eq!(written.ty, GgmlType::Q4_0);
            assert!(f.tensor_data(written) == measured.as_slice(), "the written head differs from the measured one");
        } else {
            assert_eq!((written.ty, f.tensor_data(written)), (t.ty, file.tensor_data(t)), "{}", t.name);
        }
    }
    drop(f);
    std::fs::remove_file(&out).unwrap();
}
