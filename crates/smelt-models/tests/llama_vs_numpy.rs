//! smelt's Llama forward pass against the float64 numpy implementation in
//! `tests/reference/llama_numpy.py` (fixtures beside it): SmolLM2-135M with every weight
//! expanded to F32 (the shipped file's exact values), logits at the last prompt position within
//! a stated tolerance, and 64 greedily generated tokens identical.

use std::path::Path;

use smelt_formats::npy::read_npy;
use smelt_formats::GgmlType;
use smelt_kernels::pool::ThreadPool;
use smelt_models::{KvType, Llama, LoadOptions};

/// Largest allowed |smelt - reference| over all 49,152 logits (f32 arithmetic against f64,
/// SmolLM2's logits span about +-30).
const LOGIT_TOL: f32 = 2e-4;

fn reference() -> serde_json::Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/llama_reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0 as u32
}

#[test]
fn f32_logits_and_greedy_tokens_match_numpy() {
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let model = Llama::open(&path, LoadOptions { weight_type: Some(GgmlType::F32) }).unwrap();
    let pool = ThreadPool::new(2);
    let r = reference();
    for (i, case) in r["cases"].as_array().unwrap().iter().enumerate() {
        let prompt: Vec<u32> = case["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let want: Vec<u32> = case["greedy"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let npy = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference").join(case["logits"].as_str().unwrap())).unwrap();
        let ref_logits = read_npy(&npy).unwrap().data.to_f32();
        let mut sess = model.session_with(512, KvType::F32);
        let logits = model.forward(&pool, &mut sess, &prompt, false).unwrap().to_vec();
        let max_err = logits.iter().zip(&ref_logits).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("case {i}: max |logit error| {max_err}");
        assert!(max_err <= LOGIT_TOL, "case {i}: max |logit error| {max_err} > {LOGIT_TOL}");
        let mut next = argmax(&logits);
        let mut got = Vec::new();
        for _ in 0..want.len() {
            got.push(next);
            next = argmax(model.forward(&pool, &mut sess, &[next], false).unwrap());
        }
        assert_eq!(got, want, "case {i}: greedy tokens differ");
    }
}

/// The default f16 KV cache rounds keys and values to half precision: the logits move a little
/// (bounded here) and greedy decoding still follows the reference.
#[test]
fn f16_kv_cache_stays_close_to_the_reference() {
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let model = Llama::open(&path, LoadOptions { weight_type: Some(GgmlType::F32) }).unwrap();
    let pool = ThreadPool::new(2);
    let r = reference();
    for (i, case) in r["cases"].as_array().unwrap().iter().enumerate() {
        let prompt: Vec<u32> = case["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let want: Vec<u32> = case["greedy"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let npy = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference").join(case["logits"].as_str().unwrap())).unwrap();
        let ref_logits = read_npy(&npy).unwrap().data.to_f32();
        let mut sess = model.session_with(512, KvType::F16);
        let logits = model.forward(&pool, &mut sess, &prompt, false).unwrap().to_vec();
        let max_err = logits.iter().zip(&ref_logits).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("f16 KV case {i}: max |logit error| {max_err}");
        assert!(max_err <= 0.03, "case {i}: {max_err} (observed about 0.012)");
        let mut next = argmax(&logits);
        let mut same = 0;
        for &w in &want {
            if next != w {
                break;
            }
            same += 1;
            next = argmax(model.forward(&pool, &mut sess, &[next], false).unwrap());
        }
        eprintln!("f16 KV case {i}: greedy agrees for {same} of {} tokens", want.len());
        assert!(same >= 16, "case {i}: only {same} greedy tokens agree");
    }
}

/// A Llama GGUF with llama.cpp's optional block biases (Q, K, V, output, gate, up, down): the
/// file is SmolLM2 with biases added to two layers (written here with smelt's GGUF writer,
/// read by the numpy reference through the `gguf` package), and smelt's logits with the file's
/// F32-expanded weights match the float64 reference's. The biases move the logits far more
/// than the tolerance, so a loader that ignored them would fail.
#[test]
fn optional_block_biases_match_numpy() {
    use smelt_formats::gguf::{GgufWriter, TensorSpec};
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let src = smelt_formats::GgufFile::open(&path).unwrap();
    let dir = std::env::temp_dir().join(format!("smelt-bias-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let biased = dir.join("biased.gguf");
    // Deterministic biases, a few tenths in size, on every biasable matrix of layers 0 and 17.
    let bias = |name: &str, rows: u64| -> Vec<f32> {
        let k = name.len() as f32;
        (0..rows).map(|i| 0.3 * ((i as f32) * 0.37 + k).sin()).collect()
    };
    let mut specs = Vec::new();
    let mut extra = std::collections::BTreeMap::new();
    for t in src.tensors() {
        specs.push(TensorSpec { name: t.name.clone(), dims: t.dims.clone(), ty: t.ty });
        let stem = t.name.strip_suffix(".weight").unwrap_or("");
        let biasable = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"].iter().any(|m| stem.ends_with(m));
        if biasable && (stem.starts_with("blk.0.") || stem.starts_with("blk.17.")) {
            let name = format!("{stem}.bias");
            specs.push(TensorSpec { name: name.clone(), dims: vec![t.dims[1]], ty: GgmlType::F32 });
            extra.insert(t.name.clone(), bias(&name, t.dims[1]));
        }
    }
    assert_eq!(extra.len(), 14);
    let mut w = GgufWriter::new(std::io::BufWriter::new(std::fs::File::create(&biased).unwrap()), src.header.version, &src.header.metadata, specs).unwrap();
    for t in src.tensors() {
        w.write_tensor(src.tensor_data(t)).unwrap();
        if let Some(b) = extra.get(&t.name) {
            w.write_tensor(bytemuck::cast_slice(b)).unwrap();
        }
    }
    std::io::Write::flush(&mut w.finish().unwrap()).unwrap();

    let r = reference();
    let prompt: Vec<u32> = r["cases"][0]["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let ids = dir.join("ids.json");
    std::fs::write(&ids, serde_json::to_string(&prompt).unwrap()).unwrap();
    let out = dir.join("logits.npy");
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/llama_numpy.py");
    let st = std::process::Command::new(&python).arg(&script).arg("--logits").arg(&biased).arg(&ids).arg(&out).status().unwrap();
    assert!(st.success(), "{python} {} failed (it needs gguf and numpy: scripts/test installs them)", script.display());
    let want = read_npy(&std::fs::read(&out).unwrap()).unwrap().data.to_f32();

    let model = Llama::open(&biased, LoadOptions { weight_type: Some(GgmlType::F32) }).unwrap();
    let pool = ThreadPool::new(2);
    let mut sess = model.session_with(512, KvType::F32);
    let got = model.forward(&pool, &mut sess, &prompt, false).unwrap().to_vec();
    let max_err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let unbiased = read_npy(&std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/logits_0.npy")).unwrap()).unwrap().data.to_f32();
    let moved = want.iter().zip(&unbiased).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    std::fs::remove_dir_all(&dir).ok();
    eprintln!("biased model: max |logit error| {max_err}; the biases move the reference's logits by up to {moved}");
    assert!(moved > 0.5, "the biases should move the logits ({moved})");
    assert!(max_err <= LOGIT_TOL, "max |logit error| {max_err} > {LOGIT_TOL}");
}

/// Layers of different widths (what structured pruning makes): SmolLM2 with layer 3 keeping 2
/// of its 3 key/value heads (6 of 9 query heads), layer 5 keeping 512 of its 1536 FFN channels
/// and layer 20 both, written as llama.cpp's `deci` with per-layer metadata arrays (head counts,
/// FFN widths; the head size stated). The slices are plain (no refit), so the model is a
/// different one: smelt's logits must match the float64 reference's on that file, which reads
/// each layer's widths from its matrices' shapes.
#[test]
fn per_layer_widths_match_numpy() {
    use smelt_formats::gguf::{GgufArray, GgufValue, GgufWriter, TensorSpec};
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let src = smelt_formats::GgufFile::open(&path).unwrap();
    let dir = std::env::temp_dir().join(format!("smelt-widths-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let narrow = dir.join("narrow.gguf");
    let (hd, group_q) = (64usize, 3usize);
    // (layer, kept key/value heads, kept FFN channels)
    let keep_kv = |l: usize| -> Vec<usize> { if l == 3 || l == 20 { vec![0, 2] } else { vec![0, 1, 2] } };
    let keep_ffn = |l: usize| -> Vec<usize> { if l == 5 || l == 20 { (0..1536).filter(|c| c % 3 == 1).collect() } else { (0..1536).collect() } };
    let rows_of = |heads: &[usize]| -> Vec<usize> { heads.iter().flat_map(|&h| h * hd..(h + 1) * hd).collect() };
    let mut specs = Vec::new();
    let mut data: Vec<Vec<u8>> = Vec::new();
    for t in src.tensors() {
        let bytes = src.tensor_data(t);
        let (mut dims, mut ty, mut out) = (t.dims.clone(), t.ty, bytes.to_vec());
        if let Some((l, rest)) = t.name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            let l: usize = l.parse().unwrap();
            let kv = keep_kv(l);
            let q: Vec<usize> = kv.iter().flat_map(|&g| g * group_q..(g + 1) * group_q).collect();
            let rows = match rest {
                "attn_q.weight" => Some(rows_of(&q)),
                "attn_k.weight" | "attn_v.weight" => Some(rows_of(&kv)),
                "ffn_gate.weight" | "ffn_up.weight" => Some(keep_ffn(l)),
                _ => None,
            };
            let cols = match rest {
                "attn_output.weight" => Some(rows_of(&q)),
                "ffn_down.weight" => Some(keep_ffn(l)),
                _ => None,
            };
            if let Some(rows) = rows {
                let row = bytes.len() / t.dims[1] as usize;
                out = rows.iter().flat_map(|&r| bytes[r * row..(r + 1) * row].iter().copied()).collect();
                dims[1] = rows.len() as u64;
            }
            if let Some(cols) = cols {
                let w = src.tensor_f32(t).unwrap();
                let n = t.dims[0] as usize;
                let sub: Vec<f32> = w.chunks_exact(n).flat_map(|r| cols.iter().map(|&c| r[c])).collect();
                (dims[0], ty, out) = (cols.len() as u64, GgmlType::F32, bytemuck::cast_slice(&sub).to_vec());
            }
        }
        specs.push(TensorSpec { name: t.name.clone(), dims, ty });
        data.push(out);
    }
    let mut meta = smelt_formats::gguf::Metadata::new();
    for (k, v) in src.header.metadata.iter() {
        meta.set(k.replace("llama.", "deci."), v.clone());
    }
    meta.set("general.architecture", GgufValue::String("deci".into()));
    let arr = |f: &dyn Fn(usize) -> usize| GgufValue::Array(GgufArray::U32((0..30).map(|l| f(l) as u32).collect()));
    meta.set("deci.attention.head_count", arr(&|l| keep_kv(l).len() * group_q));
    meta.set("deci.attention.head_count_kv", arr(&|l| keep_kv(l).len()));
    meta.set("deci.feed_forward_length", arr(&|l| keep_ffn(l).len()));
    meta.set("deci.attention.key_length", GgufValue::U32(hd as u32));
    meta.set("deci.attention.value_length", GgufValue::U32(hd as u32));
    let mut w = GgufWriter::new(std::io::BufWriter::new(std::fs::File::create(&narrow).unwrap()), src.header.version, &meta, specs).unwrap();
    for d in &data {
        w.write_tensor(d).unwrap();
    }
    std::io::Write::flush(&mut w.finish().unwrap()).unwrap();

    let model = Llama::open(&narrow, LoadOptions { weight_type: Some(GgmlType::F32) }).unwrap();
    assert!(!model.cfg.is_uniform());
    assert_eq!((model.cfg.shapes[20].n_heads, model.cfg.shapes[20].n_kv_heads, model.cfg.shapes[20].ffn_dim), (6, 2, 512));
    assert_eq!((model.cfg.shapes[0].n_heads, model.cfg.shapes[0].ffn_dim), (9, 1536));
    let r = reference();
    let prompt: Vec<u32> = r["cases"][2]["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let ids = dir.join("ids.json");
    std::fs::write(&ids, serde_json::to_string(&prompt).unwrap()).unwrap();
    let out = dir.join("logits.npy");
    let python = std::env::var("SMELT_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/llama_numpy.py");
    let st = std::process::Command::new(&python).arg(&script).arg("--logits").arg(&narrow).arg(&ids).arg(&out).status().unwrap();
    assert!(st.success(), "{python} {} failed (it needs gguf and numpy: scripts/test installs them)", script.display());
    let want = read_npy(&std::fs::read(&out).unwrap()).unwrap().data.to_f32();
    let pool = ThreadPool::new(2);
    // Prompt in one batch, and token by token (the decode path: per-layer KV rows).
    let mut sess = model.session_with(512, KvType::F32);
    let got = model.forward(&pool, &mut sess, &prompt, false).unwrap().to_vec();
    let mut sess1 = model.session_with(512, KvType::F32);
    let mut last = Vec::new();
    for &t in &prompt {
        last = model.forward(&pool, &mut sess1, &[t], false).unwrap().to_vec();
    }
    let full = read_npy(&std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/logits_2.npy")).unwrap()).unwrap().data.to_f32();
    let moved = want.iter().zip(&full).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    std::fs::remove_dir_all(&dir).ok();
    for (what, v) in [("batch", &got), ("one token at a time", &last)] {
        let max_err = v.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("narrow layers ({what}): max |logit error| {max_err}; the slicing moves the reference's logits by up to {moved}");
        assert!(max_err <= LOGIT_TOL, "{what}: max |logit error| {max_err} > {LOGIT_TOL}");
    }
    assert!(moved > 0.5, "the slicing should change the model ({moved})");
}

/// Continuous batching ([`Llama::forward_batch`]): the three reference prompts run as one
/// batch, each sequence at its own position (the second and third join after the first has
/// decoded a few tokens, the way a server admits requests), every row through the weights
/// together. Each prompt's logits match numpy's within the same tolerance as a lone sequence,
/// and every sequence's greedy tokens are the reference's.
#[test]
fn batched_sequences_at_different_positions_match_numpy() {
    use smelt_models::{Scratch, Step};
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let model = Llama::open(&path, LoadOptions { weight_type: Some(GgmlType::F32) }).unwrap();
    let pool = ThreadPool::new(2);
    let r = reference();
    let cases = r["cases"].as_array().unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect() };
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["prompt_ids"])).collect();
    let want: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["greedy"])).collect();
    let ref_logits: Vec<Vec<f32>> = cases
        .iter()
        .map(|c| read_npy(&std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference").join(c["logits"].as_str().unwrap())).unwrap()).unwrap().data.to_f32())
        .collect();
    let vocab = model.cfg.vocab;
    let mut sessions: Vec<_> = (0..cases.len()).map(|_| model.session_with(512, KvType::F32)).collect();
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); cases.len()];
    let mut scratch = Scratch::default();
    // Sequence i joins at step 3 * i; a sequence's next input is its prompt at first, then its
    // last greedy token.
    let mut step = 0;
    while got.iter().zip(&want).any(|(g, w)| g.len() < w.len()) {
        let active: Vec<usize> = (0..cases.len()).filter(|&i| step >= 3 * i && got[i].len() < want[i].len()).collect();
        let inputs: Vec<Vec<u32>> = active.iter().map(|&i| if sessions[i].is_empty() { prompts[i].clone() } else { vec![*got[i].last().unwrap()] }).collect();
        let fresh: Vec<bool> = active.iter().map(|&i| sessions[i].is_empty()).collect();
        let mut steps: Vec<Step> = Vec::new();
        let mut rest: &mut [smelt_models::Session] = &mut sessions;
        let mut taken = 0;
        for (&i, input) in active.iter().zip(&inputs) {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - taken);
            let (s, tail) = tail.split_first_mut().unwrap();
            steps.push(Step { sess: s, tokens: input });
            rest = tail;
            taken = i + 1;
        }
        let logits = model.forward_batch(&pool, &mut scratch, &mut steps).unwrap().to_vec();
        assert_eq!(logits.len(), active.len() * vocab);
        for (k, &i) in active.iter().enumerate() {
            let row = &logits[k * vocab..(k + 1) * vocab];
            if fresh[k] {
                let max_err = row.iter().zip(&ref_logits[i]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                eprintln!("batched case {i} (joined at step {step}, {} rows in the step): max |logit error| {max_err}", inputs.iter().map(Vec::len).sum::<usize>());
                assert!(max_err <= LOGIT_TOL, "case {i}: max |logit error| {max_err} > {LOGIT_TOL}");
            }
            got[i].push(argmax(row));
        }
        step += 1;
    }
    for i in 0..cases.len() {
        assert_eq!(got[i], want[i], "case {i}: greedy tokens differ when batched");
    }
    // A step whose sequence has no room fails as a whole and leaves every session unchanged.
    let lens: Vec<usize> = sessions.iter().map(|s| s.len()).collect();
    let mut small = model.session_with(4, KvType::F32);
    let (a, _) = sessions.split_first_mut().unwrap();
    let long = [1u32; 5];
    let err = model.forward_batch(&pool, &mut scratch, &mut [Step { sess: a, tokens: &[1] }, Step { sess: &mut small, tokens: &long }]);
    assert!(err.is_err());
    assert_eq!(sessions.iter().map(|s| s.len()).collect::<Vec<_>>(), lens);
}

/// With the shipped quantized weights (activations quantized per row for the integer dot
/// products), a sequence decoded in a batch beside another gets the logits it gets alone: the
/// server's answers and confidence do not depend on who else is being served.
#[test]
fn a_sequence_batched_with_another_gets_its_own_logits() {
    use smelt_models::{Scratch, Step};
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let model = Llama::open(&path, LoadOptions::default()).unwrap();
    let pool = ThreadPool::new(2);
    let a: Vec<u32> = vec![504, 3575, 282, 4649, 314];
    let b: Vec<u32> = vec![4563, 28, 827, 28, 1296, 28, 1839, 28];
    let vocab = model.cfg.vocab;
    // Alone: the prompt, then two decode steps.
    let mut alone = model.session(64);
    let mut want = vec![model.forward(&pool, &mut alone, &a, false).unwrap().to_vec()];
    for t in [30u32, 31] {
        want.push(model.forward(&pool, &mut alone, &[t], false).unwrap().to_vec());
    }
    // Beside b: prompts together, then decode steps together.
    let (mut sa, mut sb) = (model.session(64), model.session(64));
    let mut scratch = Scratch::default();
    let mut got = Vec::new();
    let inputs: [(Vec<u32>, Vec<u32>); 3] = [(a.clone(), b.clone()), (vec![30], vec![40]), (vec![31], vec![41])];
    for (ia, ib) in &inputs {
        let mut steps = vec![Step { sess: &mut sa, tokens: ia }, Step { sess: &mut sb, tokens: ib }];
        let logits = model.forward_batch(&pool, &mut scratch, &mut steps).unwrap();
        got.push(logits[..vocab].to_vec());
    }
    // As the server interleaves them: a's prompt alone, then a's decoding beside b's prompt.
    let (mut sa, mut sb) = (model.session(64), model.session(64));
    got.push(model.forward_batch(&pool, &mut scratch, &mut [Step { sess: &mut sa, tokens: &a }]).unwrap().to_vec());
    for (ia, ib) in [(vec![30u32], b.clone()), (vec![31], vec![40])] {
        let mut steps = vec![Step { sess: &mut sa, tokens: &ia }, Step { sess: &mut sb, tokens: &ib }];
        got.push(model.forward_batch(&pool, &mut scratch, &mut steps).unwrap()[..vocab].to_vec());
    }
    let want: Vec<Vec<f32>> = want.iter().chain(&want).cloned().collect();
    for (k, (w, g)) in want.iter().zip(&got).enumerate() {
        let max_err = w.iter().zip(g).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        eprintln!("step {k}: max |logit difference| alone vs batched {max_err}");
        assert!(max_err <= 1e-3, "step {k}: {max_err}");
    }
}

/// A session cut back to a prefix (the server's prefix reuse) and continued, alone or in a
/// batch beside another sequence, gives the logits of a fresh one (f32 weights and cache: the
/// paths differ only in summation order).
#[test]
fn a_truncated_session_continues_like_a_fresh_one() {
    use smelt_models::{Scratch, Step};
    let path = smelt_assets::ensure("smollm2-135m").unwrap();
    let model = Llama::open(&path, LoadOptions { weight_type: Some(GgmlType::F32) }).unwrap();
    let pool = ThreadPool::new(2);
    let a: Vec<u32> = vec![504, 3575, 282, 4649, 314];
    let b: Vec<u32> = vec![4563, 28, 827, 28, 1296, 28, 1839, 28];
    let vocab = model.cfg.vocab;
    let want = model.forward(&pool, &mut model.session_with(64, KvType::F32), &a, false).unwrap().to_vec();
    let mut scratch = Scratch::default();
    for batched in [false, true] {
        let mut s = model.session_with(64, KvType::F32);
        model.forward(&pool, &mut s, &a, false).unwrap();
        model.forward(&pool, &mut s, &[30], false).unwrap();
        model.forward(&pool, &mut s, &[31], false).unwrap();
        s.truncate(a.len() - 1);
        assert_eq!(s.tokens(), &a[..a.len() - 1]);
        let last = [a[a.len() - 1]];
        let got = if batched {
            let mut sb = model.session_with(64, KvType::F32);
            let mut steps = vec![Step { sess: &mut s, tokens: &last }, Step { sess: &mut sb, tokens: &b }];
            model.forward_batch(&pool, &mut scratch, &mut steps).unwrap()[..vocab].to_vec()
        } else {
            model.forward(&pool, &mut s, &last, false).unwrap().to_vec()
        };
        let max_err = want.iter().zip(&got).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(max_err <= 2e-3, "batched {batched}: max |logit difference| {max_err}");
    }
}
