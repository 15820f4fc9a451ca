//! The generated hostile-input suite: tiny valid models of every format (GGUF, safetensors
//! directory with its side files, ONNX) are broken by mutators, each of a class the loaders must
//! refuse (truncation, overlapping or duplicate tensors, non-finite or impossible
//! hyper-parameters, NaN in norms and weights, vocabularies that do not fit, broken side files),
//! or randomly (byte flips, which may leave a valid file). Every case runs the real binary and
//! must exit 1 with a one-line message (or succeed, for random cases), never panic, never change
//! an existing output file, and stay under the memory limit. The valid controls must succeed.
//!
//! CI runs a short version; `SMELT_HOSTILE_CASES=2000 cargo test -p smelt-cli --test
//! hostile_inputs -- --nocapture` runs a long one (counts are printed).

mod hostile;
mod tiny;

use std::path::Path;
use std::time::Duration;

use hostile::{budget, check_all, scratch, Case, Expect};
use serde_json::{json, Value};
use tiny::{Kv, Rng};

const TIMEOUT: Duration = Duration::from_secs(60);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// GGUF

/// One way to break the tiny Llama GGUF.
type GgufMutator = fn(&mut tiny::Gguf, &mut Rng) -> String;

fn float_keys() -> [&'static str; 2] {
    ["llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base"]
}

const BAD_FLOATS: [f32; 7] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1.0, 0.0, 1e30, -1e-5];

/// Mutators whose result every loader must refuse.
const GGUF_MUST_FAIL: &[(&str, GgufMutator)] = &[
    ("float hyper-parameter", |g, r| {
        let k = float_keys()[r.below(2)];
        let v = BAD_FLOATS[r.below(BAD_FLOATS.len())];
        g.set(k, Kv::F32(v));
        format!("{k} = {v}")
    }),
    ("rope scaling", |g, r| {
        let v = BAD_FLOATS[r.below(BAD_FLOATS.len())];
        g.set("llama.rope.scaling.type", Kv::Str("linear".into()));
        g.set("llama.rope.scaling.factor", Kv::F32(v));
        format!("rope.scaling.factor = {v}")
    }),
    ("dimension", |g, r| {
        let keys = ["llama.embedding_length", "llama.block_count", "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv"];
        let k = keys[r.below(keys.len())];
        let v = [0u32, 3, 5, 7, 1 << 21, u32::MAX, 31][r.below(7)];
        g.set(k, Kv::U32(v));
        format!("{k} = {v}")
    }),
    ("context length of zero", |g, _| {
        g.set("llama.context_length", Kv::U32(0));
        "llama.context_length = 0".into()
    }),
    ("norm weight not finite", |g, r| {
        let names: Vec<String> = g.tensors.iter().filter(|t| t.name.contains("norm")).map(|t| t.name.clone()).collect();
        let name = names[r.below(names.len())].clone();
        let t = g.tensor_mut(&name);
        let i = r.below(t.data.len() / 4);
        let v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][r.below(3)];
        t.data[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        format!("{name}[{i}] = {v}")
    }),
    ("weight not finite", |g, r| {
        let names: Vec<String> = g.tensors.iter().filter(|t| t.dims.len() == 2).map(|t| t.name.clone()).collect();
        let name = names[r.below(names.len())].clone();
        let t = g.tensor_mut(&name);
        let v = [f32::NAN, f32::INFINITY][r.below(2)];
        // A whole row, so that the prompt's tokens meet it whichever matrix it is.
        let row = t.dims[0] as usize * 4;
        let at = r.below(t.data.len() / row) * row;
        for i in (at..at + row).step_by(4) {
            t.data[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
        format!("a row of {name} = {v}")
    }),
    ("tensor moved onto another", |g, r| {
        let offs = g.offsets();
        let (a, b) = (r.below(offs.len()), r.below(offs.len()));
        let b = if a == b { (b + 1) % offs.len() } else { b };
        g.tensors[a].offset = Some(offs[b]);
        for (i, t) in g.tensors.iter_mut().enumerate() {
            if i != a {
                t.offset = Some(offs[i]);
            }
        }
        format!("{} moved onto {}", g.tensors[a].name, g.tensors[b].name)
    }),
    ("tensor retyped to a wider type", |g, r| {
        let i = r.below(g.tensors.len());
        g.tensors[i].ty = 28; // F64: twice the bytes of the F32 data
        format!("{} as F64", g.tensors[i].name)
    }),
    ("duplicate tensor name", |g, r| {
        let (a, b) = (r.below(g.tensors.len()), r.below(g.tensors.len()));
        let b = if a == b { (b + 1) % g.tensors.len() } else { b };
        g.tensors[a].name = g.tensors[b].name.clone();
        format!("two tensors named {}", g.tensors[b].name)
    }),
    ("duplicate metadata key", |g, r| {
        let i = r.below(g.kv.len());
        let e = g.kv[i].clone();
        g.kv.push(e.clone());
        format!("{} twice", e.0)
    }),
    ("missing tensor", |g, r| {
        let i = r.below(g.tensors.len());
        let t = g.tensors.remove(i);
        format!("no {}", t.name)
    }),
    ("matrix of the wrong shape", |g, r| {
        let names: Vec<String> = g.tensors.iter().filter(|t| t.dims.len() == 2 && t.dims[0] != t.dims[1]).map(|t| t.name.clone()).collect();
        let name = names[r.below(names.len())].clone();
        g.tensor_mut(&name).dims.reverse();
        format!("{name} transposed")
    }),
    ("embedding table shorter than the vocabulary", |g, r| {
        let cut = 1 + r.below(200);
        let t = g.tensor_mut("token_embd.weight");
        t.dims[1] -= cut as u64;
        let n = (t.dims[0] * t.dims[1] * 4) as usize;
        t.data.truncate(n);
        format!("token_embd.weight {cut} rows short")
    }),
    ("vocabulary longer than the embedding table", |g, r| {
        let extra = 1 + r.below(5);
        if let Some(Kv::Strs(toks)) = g.kv.iter_mut().find(|(k, _)| k == "tokenizer.ggml.tokens").map(|e| &mut e.1) {
            for i in 0..extra {
                toks.push(format!("<extra_{i}>"));
            }
        }
        if let Some(Kv::I32s(types)) = g.kv.iter_mut().find(|(k, _)| k == "tokenizer.ggml.token_type").map(|e| &mut e.1) {
            types.extend(std::iter::repeat_n(1, extra));
        }
        format!("{extra} tokens without a row")
    }),
    ("special token id outside the vocabulary", |g, r| {
        let k = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id"][r.below(2)];
        let v = [262u32 + 7, u32::MAX][r.below(2)];
        g.set(k, Kv::U32(v));
        format!("{k} = {v}")
    }),
    ("merge of unknown tokens", |g, r| {
        if let Some(Kv::Strs(m)) = g.kv.iter_mut().find(|(k, _)| k == "tokenizer.ggml.merges").map(|e| &mut e.1) {
            m.push(["zz qq", "nospace", "\u{1F600} x"][r.below(3)].into());
        }
        "a merge of tokens not in the vocabulary".into()
    }),
    ("unsupported tokenizer or architecture", |g, r| match r.below(3) {
        0 => {
            g.set("tokenizer.ggml.model", Kv::Str("llama".into()));
            "tokenizer.ggml.model = llama".into()
        }
        1 => {
            g.set("general.architecture", Kv::Str("gptneox".into()));
            "general.architecture = gptneox".into()
        }
        _ => {
            g.set("tokenizer.ggml.pre", Kv::Str("unknown-pre".into()));
            "tokenizer.ggml.pre = unknown-pre".into()
        }
    }),
];

fn gguf_cases(dir: &Path, n: usize) -> Vec<Case> {
    let base = tiny::llama(7);
    let out = dir.join("existing-out.gguf");
    let mut cases = Vec::new();
    let mut rng = Rng(0x5eed_6767);
    let run = |f: &Path| vec!["run", "-m", s(f), "--raw", "-p", "hello world", "-n", "3", "--temp", "0", "-q"].into_iter().map(String::from).collect::<Vec<_>>();
    // Controls: the valid model runs, quantizes and inspects.
    let valid = dir.join("valid.gguf");
    std::fs::write(&valid, base.to_bytes()).unwrap();
    cases.push(Case { name: "valid gguf: run".into(), args: run(&valid), stdin: None, expect: Expect::Either, output: None });
    for k in 0..n {
        let (kind, m) = GGUF_MUST_FAIL[k % GGUF_MUST_FAIL.len()];
        let mut g = base.clone();
        let what = m(&mut g, &mut rng);
        let f = dir.join(format!("gguf-{k}.gguf"));
        std::fs::write(&f, g.to_bytes()).unwrap();
        let name = format!("gguf {kind}: {what}");
        cases.push(Case { name: name.clone(), args: run(&f), stdin: None, expect: Expect::Fail, output: None });
        // Structural damage is refused by every reader, before any output is touched; non-finite
        // data by quantize too (it reads every value).
        let structural = ["tensor moved onto another", "tensor retyped to a wider type", "duplicate tensor name", "duplicate metadata key"].contains(&kind);
        if structural || kind.ends_with("not finite") {
            let args = ["quantize", s(&f), s(&out), "--to", "q8_0", "-q"].map(String::from).to_vec();
            cases.push(Case { name: format!("{name} (quantize)"), args, stdin: None, expect: Expect::Fail, output: Some(out.clone()) });
        }
        if structural {
            cases.push(Case::new(format!("{name} (inspect)"), &["inspect", s(&f), "-q"], Expect::Fail));
        }
    }
    // Truncation anywhere before the end of the last tensor's data.
    let bytes = base.to_bytes();
    for k in 0..n / 2 {
        let cut = rng.below(bytes.len() - 32);
        let f = dir.join(format!("cut-{k}.gguf"));
        std::fs::write(&f, &bytes[..cut]).unwrap();
        let args = ["quantize", s(&f), s(&out), "--to", "q8_0", "-q"].map(String::from).to_vec();
        cases.push(Case { name: format!("gguf truncated at {cut}"), args, stdin: None, expect: Expect::Fail, output: Some(out.clone()) });
    }
    // Random byte changes in the header and metadata: anything may happen but a crash.
    let header_end = bytes.len() - base.tensors.iter().map(|t| t.data.len()).sum::<usize>();
    for k in 0..n {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(header_end);
            b[i] = [0u8, 0xff, 0x7f, 0x80, b[i] ^ 1, b'9'][rng.below(6)];
        }
        let f = dir.join(format!("flip-{k}.gguf"));
        std::fs::write(&f, &b).unwrap();
        cases.push(Case { name: format!("gguf random bytes #{k}"), args: run(&f), stdin: None, expect: Expect::Either, output: None });
    }
    cases
}

#[test]
fn hostile_gguf_files_are_refused_cleanly() {
    let dir = scratch("gguf");
    let cases = gguf_cases(&dir, budget(64));
    check_all("GGUF", &cases, TIMEOUT);
    // The control really ran.
    let o = hostile::check(&cases[0], TIMEOUT).unwrap();
    assert_eq!(o.code, Some(0), "{}", o.stderr);
}

// ---------------------------------------------------------------------------------------------
// Sentence-transformers directories (safetensors, config.json, tokenizer.json, side files)

type DirMutator = fn(&mut tiny::BertDir, &mut Rng) -> String;

fn set(v: &mut Value, key: &str, x: Value) {
    v.as_object_mut().unwrap().insert(key.into(), x);
}

const DIR_MUST_FAIL: &[(&str, DirMutator)] = &[
    ("layer_norm_eps", |d, r| {
        let v = [json!(-1.0), json!(0.0), json!(1e30), json!("abc"), json!(null), json!(-1e-12)][r.below(6)].clone();
        set(&mut d.config, "layer_norm_eps", v.clone());
        format!("layer_norm_eps = {v}")
    }),
    ("config dimension", |d, r| {
        let keys = ["hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "max_position_embeddings", "vocab_size", "type_vocab_size"];
        let k = keys[r.below(keys.len())];
        let v = [json!(0), json!(5), json!(3), json!(1u64 << 40), json!(-1), json!("x"), json!(7.5)][r.below(7)].clone();
        set(&mut d.config, k, v.clone());
        format!("{k} = {v}")
    }),
    ("unsupported architecture", |d, r| {
        let (k, v) = [("hidden_act", "relu"), ("position_embedding_type", "relative_key"), ("model_type", "t5")][r.below(3)];
        set(&mut d.config, k, json!(v));
        format!("{k} = {v}")
    }),
    ("norm or bias not finite", |d, r| {
        let names: Vec<String> = d.tensors.iter().filter(|t| t.shape.len() == 1 || t.name.contains("position")).map(|t| t.name.clone()).collect();
        let name = names[r.below(names.len())].clone();
        let t = d.tensor_mut(&name);
        let i = r.below(t.data.len() / 4);
        let v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][r.below(3)];
        t.data[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        format!("{name}[{i}] = {v}")
    }),
    ("weight not finite", |d, r| {
        let names: Vec<String> = d.tensors.iter().filter(|t| t.shape.len() == 2 && t.name.contains("encoder")).map(|t| t.name.clone()).collect();
        let name = names[r.below(names.len())].clone();
        let t = d.tensor_mut(&name);
        let v = [f32::NAN, f32::INFINITY][r.below(2)];
        for i in (0..t.data.len()).step_by(4) {
            t.data[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
        format!("{name} = {v}")
    }),
    ("duplicate tensor name", |d, r| {
        let (a, b) = (r.below(d.tensors.len()), r.below(d.tensors.len()));
        let b = if a == b { (b + 1) % d.tensors.len() } else { b };
        d.tensors[a].name = d.tensors[b].name.clone();
        format!("two tensors named {}", d.tensors[b].name)
    }),
    ("overlapping tensor data", |d, r| {
        let starts: Vec<usize> = d.tensors.iter().scan(0, |at, t| {
            let a = *at;
            *at += t.data.len();
            Some(a)
        }).collect();
        let i = 1 + r.below(d.tensors.len() - 1);
        let shift = 4 * (1 + r.below(4));
        let t = &mut d.tensors[i];
        t.range = Some((starts[i] - shift, starts[i] - shift + t.data.len()));
        format!("{} starts {shift} bytes early", t.name)
    }),
    ("dtype that does not fit the bytes", |d, r| {
        let i = r.below(d.tensors.len());
        d.tensors[i].dtype = ["F16", "F64", "BF16", "I64"][r.below(4)].into();
        format!("{} as {}", d.tensors[i].name, d.tensors[i].dtype)
    }),
    ("table of the wrong shape", |d, r| {
        let name = ["embeddings.position_embeddings.weight", "embeddings.word_embeddings.weight", "embeddings.token_type_embeddings.weight"][r.below(3)];
        let t = d.tensor_mut(name);
        let rows = t.shape[0] - 1;
        t.shape[0] = rows;
        t.data.truncate(rows * t.shape[1] * 4);
        format!("{name} one row short")
    }),
    ("tokenizer vocabulary longer than the embedding table", |d, r| {
        let extra = 1 + r.below(9);
        let vocab = d.tokenizer["model"]["vocab"].as_object_mut().unwrap();
        let n = vocab.values().filter_map(Value::as_u64).max().unwrap() as usize + 1;
        for i in 0..extra {
            vocab.insert(format!("extra{i}"), json!(n + i));
        }
        format!("{extra} tokens without a row")
    }),
    ("tokenizer.json content", |d, r| match r.below(4) {
        0 => {
            d.tokenizer["model"]["type"] = json!("BPE");
            "model type BPE".into()
        }
        1 => {
            d.tokenizer["model"]["vocab"].as_object_mut().unwrap().remove("[CLS]");
            "no [CLS]".into()
        }
        2 => {
            d.tokenizer["model"]["vocab"]["the"] = json!(1u64 << 40);
            "a token id of 2^40".into()
        }
        _ => {
            d.tokenizer = json!([1, 2, 3]);
            "an array".into()
        }
    }),
    ("modules.json", |d, r| {
        let v = [json!({"not": "a list"}), json!([{"idx": 0}]), json!("x"), json!([1, 2])][r.below(4)].clone();
        d.modules = Some(v.clone());
        format!("modules.json = {v}")
    }),
    ("max_seq_length", |d, r| {
        let v = [json!(0), json!(1), json!(-1), json!(1e9), json!("x"), json!(65), json!(2.5)][r.below(7)].clone();
        d.st_config = Some(json!({"max_seq_length": v}));
        format!("max_seq_length = {v}")
    }),
    ("pooling config", |d, r| {
        let v = match r.below(3) {
            0 => json!({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": false}),
            1 => json!({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true}),
            _ => json!({"word_embedding_dimension": 16, "pooling_mode_mean_tokens": true}),
        };
        d.pooling = Some(v.clone());
        format!("1_Pooling/config.json = {v}")
    }),
];

/// Files of the directory to damage as raw bytes.
const DIR_FILES: [&str; 6] = ["config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "model.safetensors"];

fn dir_cases(root: &Path, n: usize) -> Vec<Case> {
    let base = tiny::bert(11);
    let texts = root.join("texts.txt");
    std::fs::write(&texts, "A man is playing a guitar.\nthe man is playing\n\nx\n").unwrap();
    let out = root.join("existing.npy");
    let embed = |d: &Path| ["embed", "-m", s(d), s(&texts), "-o", s(&out), "-q"].map(String::from).to_vec();
    let mut cases = Vec::new();
    let valid = base.write(&root.join("valid"));
    cases.push(Case { name: "valid directory: embed".into(), args: embed(&valid), stdin: None, expect: Expect::Either, output: None });
    let mut rng = Rng(0xd1ec_7041);
    for k in 0..n {
        let (kind, m) = DIR_MUST_FAIL[k % DIR_MUST_FAIL.len()];
        let mut d = base.clone();
        let what = m(&mut d, &mut rng);
        let p = d.write(&root.join(format!("dir-{k}")));
        cases.push(Case { name: format!("directory {kind}: {what}"), args: embed(&p), stdin: None, expect: Expect::Fail, output: Some(out.clone()) });
    }
    // Side files and weights truncated, or not UTF-8: refused.
    for k in 0..n / 2 {
        let file = DIR_FILES[k % DIR_FILES.len()];
        let p = base.write(&root.join(format!("cut-{k}")));
        let mut b = std::fs::read(p.join(file)).unwrap();
        let what = if k % 3 == 0 {
            b.insert(rng.below(b.len()), 0xff);
            "an invalid UTF-8 byte".to_string()
        } else {
            let cut = 1 + rng.below(b.len() - 2);
            b.truncate(cut);
            format!("cut at {cut}")
        };
        if file == "model.safetensors" && what.contains("UTF-8") {
            continue; // a byte inside tensor data is not an error
        }
        std::fs::write(p.join(file), &b).unwrap();
        cases.push(Case { name: format!("directory {file}: {what}"), args: embed(&p), stdin: None, expect: Expect::Fail, output: Some(out.clone()) });
    }
    // Random byte changes in the JSON files and the safetensors header.
    for k in 0..n {
        let file = DIR_FILES[k % DIR_FILES.len()];
        let p = base.write(&root.join(format!("flip-{k}")));
        let mut b = std::fs::read(p.join(file)).unwrap();
        let span = if file == "model.safetensors" { 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize } else { b.len() };
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(span);
            b[i] = [b'0', b'9', b'-', b'"', b'{', b'e', 0, b' '][rng.below(8)];
        }
        std::fs::write(p.join(file), &b).unwrap();
        cases.push(Case { name: format!("directory {file}: random bytes #{k}"), args: embed(&p), stdin: None, expect: Expect::Either, output: Some(out.clone()) });
    }
    cases
}

#[test]
fn hostile_encoder_directories_are_refused_cleanly() {
    let root = scratch("dirs");
    let cases = dir_cases(&root, budget(64));
    check_all("encoder directory", &cases, TIMEOUT);
    let o = hostile::check(&cases[0], TIMEOUT).unwrap();
    assert_eq!(o.code, Some(0), "{}", o.stderr);
}

// ---------------------------------------------------------------------------------------------
// ONNX

fn onnx_cases(root: &Path, n: usize) -> Vec<Case> {
    let (inits, tok) = tiny::bert_onnx(13);
    let texts = root.join("texts.txt");
    std::fs::write(&texts, "A man is playing a guitar.\nthe man\n").unwrap();
    let embed = |f: &Path| ["embed", "-m", s(f), s(&texts), "-q"].map(String::from).to_vec();
    let mut cases = Vec::new();
    let valid = tiny::write_onnx(&root.join("valid"), &inits, &tok);
    cases.push(Case { name: "valid onnx: embed".into(), args: embed(&valid), stdin: None, expect: Expect::Either, output: None });
    let mut rng = Rng(0x0dd0_0077);
    for k in 0..n {
        let mut m = inits.clone();
        let what = match k % 4 {
            0 => {
                let i = rng.below(m.len());
                m.push(m[i].clone());
                format!("{} twice", m[i].0)
            }
            1 => {
                let names: Vec<usize> = (0..m.len()).filter(|&i| m[i].1.len() == 1).collect();
                let i = names[rng.below(names.len())];
                let j = rng.below(m[i].2.len());
                m[i].2[j] = [f32::NAN, f32::INFINITY][rng.below(2)];
                format!("{}[{j}] not finite", m[i].0)
            }
            2 => {
                let i = rng.below(m.len());
                let t = &mut m[i];
                t.1 = vec![t.1.iter().product::<i64>() + 1];
                format!("{} with a wrong shape", t.0)
            }
            _ => {
                let i = rng.below(m.len());
                let t = m.remove(i);
                format!("no {}", t.0)
            }
        };
        let f = tiny::write_onnx(&root.join(format!("onnx-{k}")), &m, &tok);
        cases.push(Case { name: format!("onnx: {what}"), args: embed(&f), stdin: None, expect: Expect::Fail, output: None });
    }
    let bytes = tiny::bert_onnx_bytes(&inits);
    for k in 0..n {
        let mut b = bytes.clone();
        let what = if k % 2 == 0 {
            let cut = 1 + rng.below(b.len() - 1);
            b.truncate(cut);
            format!("cut at {cut}")
        } else {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            "random bytes".into()
        };
        let f = tiny::write_onnx(&root.join(format!("bytes-{k}")), &inits, &tok);
        std::fs::write(&f, &b).unwrap();
        cases.push(Case { name: format!("onnx: {what} #{k}"), args: embed(&f), stdin: None, expect: Expect::Either, output: None });
    }
    cases
}

#[test]
fn hostile_onnx_files_are_refused_cleanly() {
    let root = scratch("onnx");
    let cases = onnx_cases(&root, budget(48));
    check_all("ONNX", &cases, TIMEOUT);
    let o = hostile::check(&cases[0], TIMEOUT).unwrap();
    assert_eq!(o.code, Some(0), "{}", o.stderr);
}
