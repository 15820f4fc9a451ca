//! The sensitivity probes of `smelt fit` on SmolLM2: a pass started at layer `l` from the
//! reference's residual stream gives the full pass's logits bit for bit, so a matrix of layer
//! `l` changed alone has the same KLD measured either way; and the candidates' predicted losses
//! scale with their weighted errors from the one measured probe.

use smelt_compress::fit::{probe, quantize_candidates};
use smelt_eval::lm::RefLogprobs;
use smelt_formats::{GgmlType, GgufFile};
use smelt_kernels::pool::ThreadPool;
use smelt_models::linear::Linear;
use smelt_models::LoadOptions;

#[test]
fn a_pass_from_a_layer_equals_the_full_pass_and_probes_agree() {
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let mut m = smelt_models::load(&path, LoadOptions::default()).unwrap();
    let pool = ThreadPool::new(2);
    let tokens: Vec<u32> = m.tok.encode("The family of Dashwood had long been settled in Sussex. Their estate was large, and their residence was at Norland Park.", false);
    let model = &m.model;
    let mut sess = model.session(tokens.len());
    let mut res = Vec::new();
    let full = model.forward_capture(&pool, &mut sess, &tokens, true, &mut res).unwrap().to_vec();
    // Every layer's input, and the last layer's output.
    assert_eq!(res.len(), model.layers.len() + 1);
    for l in [1, 15, 29, 30] {
        let mut sess = model.session(tokens.len());
        let from = model.forward_from(&pool, &mut sess, &tokens, true, l, &res[l]).unwrap();
        assert!(from == full.as_slice(), "layer {l}: logits differ");
    }
    // A used session or a wrong width is refused.
    assert!(model.forward_from(&pool, &mut sess, &tokens, true, 3, &res[3]).is_err());
    let mut fresh = model.session(tokens.len());
    assert!(model.forward_from(&pool, &mut fresh, &tokens, true, 3, &res[3][1..]).is_err());

    // One matrix of layer 15 changed: the KLD from layer 15 equals the full pass's.
    let reference = RefLogprobs::new(&pool, model, vec![tokens.clone()], 4).unwrap();
    assert!(reference.kld(&pool, model).unwrap() < 1e-6);
    let name = "blk.15.ffn_up.weight";
    let lin = m.model.linear_mut(name).unwrap();
    let q4 = lin.converted(GgmlType::Q4_0).unwrap();
    let old = std::mem::replace(lin, q4);
    let (a, b) = (reference.kld(&pool, &m.model).unwrap(), reference.kld_from(&pool, &m.model, 15).unwrap());
    assert!(a > 1e-5 && a == b, "full {a} vs from layer 15 {b}");
    *m.model.linear_mut(name).unwrap() = old;

    // Probes: for every matrix, the smallest candidate's predicted loss is the measured KLD,
    // and the others scale with their weighted errors; "keep" is free.
    let file = GgufFile::open(&path).unwrap();
    let mut choices = quantize_candidates(&file, &smelt_compress::fit::matrices(&file, &mut m.model), None, None, &[GgmlType::Q4_0, GgmlType::Q8_0], &pool, &mut |_, _, _| {}).unwrap();
    choices.retain(|c| c.name.starts_with("blk.29.") || c.name.starts_with("blk.0.attn_v"));
    probe(&mut m.model, &mut choices, &reference, &pool, &mut |_, _, _| {}).unwrap();
    for c in &choices {
        let (ty, kld) = c.probe.unwrap();
        let first = c.candidates.iter().find(|x| !x.kept).unwrap();
        assert_eq!((first.ty, first.loss), (ty, kld), "{}", c.name);
        for x in &c.candidates {
            let want = if x.kept { 0.0 } else { kld * x.werr / first.werr };
            assert!((x.loss - want).abs() <= 1e-12 * want.max(1.0), "{} {}", c.name, x.ty);
        }
        // The model is left as it was.
        let lin: &Linear = m.model.linear_mut(&c.name).unwrap();
        assert_eq!(lin.ty, c.source, "{}", c.name);
    }
    assert!(reference.kld(&pool, &m.model).unwrap() < 1e-6);
}
